#include "training/checkpoint.h"

#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <vector>

#include "core/errors.h"

namespace llmq {

namespace fs = std::filesystem;

namespace {
constexpr const char* kTrainerState = "trainer.json";

std::optional<int> step_of(const fs::path& dir) {
  const std::string name = dir.filename().string();
  if (name.size() != 13 || name.rfind("step-", 0) != 0) return std::nullopt;
  if (!std::all_of(name.begin() + 5, name.end(), [](char c) { return c >= '0' && c <= '9'; })) return std::nullopt;
  return std::stoi(name.substr(5));
}

std::vector<std::pair<int, fs::path>> complete_checkpoints(const fs::path& checkpoint_dir) {
  std::vector<std::pair<int, fs::path>> found;
  if (!fs::is_directory(checkpoint_dir)) return found;
  for (const auto& entry : fs::directory_iterator(checkpoint_dir)) {
    auto step = step_of(entry.path());
    if (step && entry.is_directory() && fs::exists(entry.path() / kTrainerState)) found.emplace_back(*step, entry.path());
  }
  std::sort(found.begin(), found.end());
  return found;
}
}  // namespace

fs::path checkpoint_path(const fs::path& checkpoint_dir, int step) {
  return checkpoint_dir / fmt::format("step-{:08d}", step);
}

void write_checkpoint(const fs::path& checkpoint_dir, int step, const nlohmann::json& trainer_state,
                      const std::function<void(const fs::path&)>& save_model) {
  const fs::path final_dir = checkpoint_path(checkpoint_dir, step);
  const fs::path tmp = checkpoint_dir / fmt::format(".step-{:08d}.tmp", step);
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  LLMQ_REQUIRE(!ec, "cannot create checkpoint directory {}: {} (check --checkpoint-dir and free disk space)",
               tmp.string(), ec.message());
  save_model(tmp);
  {
    std::ofstream out(tmp / kTrainerState);
    out << trainer_state.dump(2) << "\n";
    out.flush();
    LLMQ_REQUIRE(out.good(), "cannot write {}: disk full?", (tmp / kTrainerState).string());
  }
  if (fs::exists(final_dir)) {  // an earlier run's checkpoint of the same step: replace it
    const fs::path old = checkpoint_dir / fmt::format(".step-{:08d}.old", step);
    fs::remove_all(old);
    fs::rename(final_dir, old);
    fs::rename(tmp, final_dir);
    fs::remove_all(old);
  } else {
    fs::rename(tmp, final_dir);
  }
}

std::optional<fs::path> latest_checkpoint(const fs::path& checkpoint_dir) {
  auto found = complete_checkpoints(checkpoint_dir);
  if (found.empty()) return std::nullopt;
  return found.back().second;
}

fs::path resolve_checkpoint(const std::string& spec, const fs::path& checkpoint_dir) {
  const bool is_step = !spec.empty() && std::all_of(spec.begin(), spec.end(), [](char c) { return c >= '0' && c <= '9'; });
  if (is_step) {
    const fs::path dir = checkpoint_path(checkpoint_dir, std::stoi(spec));
    LLMQ_REQUIRE(fs::exists(dir / kTrainerState), "--continue {}: no complete checkpoint {} (see --checkpoint-dir)",
                 spec, dir.string());
    return dir;
  }
  const fs::path folder = spec.empty() ? checkpoint_dir : fs::path(spec);
  if (fs::exists(folder / kTrainerState)) return folder;
  auto latest = latest_checkpoint(folder);
  LLMQ_REQUIRE(latest.has_value(), "--continue: no complete checkpoint in {} (pass a checkpoint directory or step "
               "number, or check --checkpoint-dir / --name)", folder.string());
  return *latest;
}

nlohmann::json read_trainer_state(const fs::path& checkpoint) {
  const fs::path file = checkpoint / kTrainerState;
  std::ifstream in(file);
  LLMQ_REQUIRE(in.good(), "{} is not a complete checkpoint ({} missing)", checkpoint.string(), kTrainerState);
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw Error(fmt::format("checkpoint {}: {} is not valid JSON ({})", checkpoint.string(), kTrainerState, e.what()));
  }
}

void prune_checkpoints(const fs::path& checkpoint_dir, int keep_n, int major_every, int interval) {
  if (keep_n < 0) return;
  auto found = complete_checkpoints(checkpoint_dir);
  const int removable = static_cast<int>(found.size()) - keep_n;
  for (int i = 0; i < removable; ++i) {
    const int step = found[i].first;
    const bool major = major_every > 0 && interval > 0 && (step / interval) % major_every == 0;
    if (!major) fs::remove_all(found[i].second);
  }
}

}  // namespace llmq
