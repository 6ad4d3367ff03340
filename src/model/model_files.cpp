// Model file resolution: local directory or Hugging Face hub cache (see model_files.h).
#include "model/model_files.h"

#include <fmt/format.h>

#include <cctype>
#include <cstdlib>
#include <fstream>

#include "model/config.h"

namespace llmq {

namespace fs = std::filesystem;

namespace {

bool is_dir(const fs::path& p) {
  std::error_code ec;
  return fs::is_directory(p, ec);
}

bool is_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);  // follows symlinks, as the hub cache links snapshots to blobs
}

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

// "Org/Name": two non-empty parts, not a relative or absolute path.
bool is_hub_name(std::string_view s) {
  auto slash = s.find('/');
  if (slash == std::string_view::npos || slash == 0 || slash + 1 == s.size()) return false;
  if (s.find('/', slash + 1) != std::string_view::npos) return false;
  return s.front() != '.' && s.front() != '~';
}

fs::path hub_repo_dir(std::string_view hub_name) {
  auto slash = hub_name.find('/');
  return hf_hub_cache_dir() /
         fmt::format("models--{}--{}", hub_name.substr(0, slash), hub_name.substr(slash + 1));
}

std::string read_first_line(const fs::path& p) {
  std::ifstream in(p);
  std::string line;
  std::getline(in, line);
  while (!line.empty() && std::isspace(static_cast<unsigned char>(line.back()))) line.pop_back();
  return line;
}

// The snapshot named by refs/main, else the most recently modified one.
std::optional<fs::path> pick_snapshot(const fs::path& repo) {
  const fs::path snapshots = repo / "snapshots";
  if (!is_dir(snapshots)) return std::nullopt;
  if (is_file(repo / "refs" / "main")) {
    std::string rev = read_first_line(repo / "refs" / "main");
    if (!rev.empty() && rev.find('/') == std::string::npos && is_dir(snapshots / rev)) return snapshots / rev;
  }
  std::optional<fs::path> newest;
  fs::file_time_type newest_time{};
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(snapshots, ec)) {
    if (!is_dir(entry.path())) continue;
    auto t = fs::last_write_time(entry.path(), ec);
    if (ec) continue;
    if (!newest || t > newest_time) {
      newest = entry.path();
      newest_time = t;
    }
  }
  return newest;
}

ModelFiles files_in(const fs::path& dir) {
  ModelFiles f;
  f.dir = dir;
  if (is_file(dir / "config.json")) f.config_json = dir / "config.json";
  if (is_file(dir / "model.safetensors"))
    f.weights = dir / "model.safetensors";
  else if (is_file(dir / "model.safetensors.index.json"))
    f.weights = dir / "model.safetensors.index.json";
  if (is_file(dir / "tokenizer.json")) f.tokenizer_json = dir / "tokenizer.json";
  return f;
}

}  // namespace

fs::path hf_hub_cache_dir() {
  if (const char* hub = env("HF_HUB_CACHE")) return hub;
  if (const char* home = env("HF_HOME")) return fs::path(home) / "hub";
  if (const char* home = env("HOME")) return fs::path(home) / ".cache" / "huggingface" / "hub";
  return fs::path(".cache") / "huggingface" / "hub";
}

ModelFiles resolve_model(std::string_view name_or_path) {
  const fs::path local(name_or_path);
  if (!name_or_path.empty() && is_dir(local)) return files_in(local);
  if (!is_hub_name(name_or_path)) return {};
  if (auto snapshot = pick_snapshot(hub_repo_dir(name_or_path))) return files_in(*snapshot);
  return {};
}

std::vector<fs::path> model_search_locations(std::string_view name_or_path) {
  std::vector<fs::path> places{fs::absolute(fs::path(name_or_path))};
  if (is_hub_name(name_or_path)) places.push_back(hub_repo_dir(name_or_path) / "snapshots");
  return places;
}

std::string model_not_found_message(std::string_view name) {
  if (is_dir(fs::path(name)))
    return fmt::format("model directory {} holds no config.json: pass the folder that contains config.json and "
                       "model.safetensors", name);
  std::string msg = fmt::format("model '{}' not found. Searched:\n", name);
  for (const auto& place : model_search_locations(name)) msg += fmt::format("  {}\n", place.string());
  if (is_hub_name(name))
    msg += fmt::format("Download it with `huggingface-cli download {}` (the cache folder is $HF_HUB_CACHE, else "
                       "$HF_HOME/hub, else ~/.cache/huggingface/hub), ", name);
  else
    msg += "Pass a directory holding config.json and model.safetensors, a downloaded Hugging Face name (Org/Name), ";
  msg += "or start from random weights with --from-scratch";
  if (find_preset(name))
    msg += fmt::format(" (the preset '{}' is built in)", name);
  else
    msg += fmt::format(" and a preset name, e.g. --model={}", preset_names().front());
  msg += ".";
  return msg;
}

}  // namespace llmq
