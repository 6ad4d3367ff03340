// Console line formats, the JSON-lines training log and the rank-0 console; see logger.h.
#include "training/logger.h"

#include <cmath>
#include <filesystem>

#include "core/errors.h"

namespace llmq {

std::string format_tokens_per_second(double tps) {
  if (!std::isfinite(tps) || tps < 0) return "  n/a";
  if (tps < 1e5) return fmt::format("{:5.0f}", tps);
  if (tps < 1e7) return fmt::format("{:4.0f}k", tps / 1e3);
  return fmt::format("{:4.0f}M", tps / 1e6);
}

namespace {
std::string line_head(char kind, int step, double epoch_progress, double ms) {
  return fmt::format("[{}] step {:5d} [{:5.1f}%] | time: {:5.0f} ms", kind, step, 100.0 * epoch_progress, ms);
}
}  // namespace

std::string format_train_line(int step, double epoch_progress, double ms, double grad_norm, double loss,
                              double tokens_per_s, std::optional<double> sol_fraction) {
  const std::string sol = sol_fraction ? fmt::format("{:.1f}%", 100.0 * *sol_fraction) : std::string("n/a");
  return fmt::format("{} | norm {:10.6f} | loss {:10.6f} | tps {} | sol {}", line_head('T', step, epoch_progress, ms),
                     grad_norm, loss, format_tokens_per_second(tokens_per_s), sol);
}

std::string format_eval_line(int step, double epoch_progress, double ms, double eval_loss, double train_loss,
                             double tokens_per_s) {
  return fmt::format("{} | eval {:10.6f} | train {:9.6f} | tps {}", line_head('V', step, epoch_progress, ms),
                     eval_loss, train_loss, format_tokens_per_second(tokens_per_s));
}

TrainingLogger::TrainingLogger(const std::string& path, int rank, bool append) : path_(path), rank_(rank) {
  if (!enabled()) return;
  const auto parent = std::filesystem::path(path).parent_path();
  std::error_code ec;
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  LLMQ_REQUIRE(!ec, "cannot create the log folder {}: {} (choose another with --log-file=PATH)", parent.string(),
               ec.message());
  out_.open(path, std::ios::out | (append ? std::ios::app : std::ios::trunc));
  LLMQ_REQUIRE(out_.is_open(), "cannot write the log file {} (choose another with --log-file=PATH)", path);
}

void TrainingLogger::write(const nlohmann::json& record) {
  if (!enabled()) return;
  // Invalid UTF-8 in a message must not abort training: replace it instead of throwing.
  out_ << record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
  out_.flush();
}

void TrainingLogger::log_options(const nlohmann::json& options) {
  nlohmann::json record = {{"kind", "options"}};
  record.update(options);
  write(record);
}

void TrainingLogger::log_gpu(const nlohmann::json& gpu) {
  nlohmann::json record = {{"kind", "gpu"}};
  record.update(gpu);
  write(record);
}

void TrainingLogger::log_train(const TrainRecord& r) {
  write({{"kind", "train"}, {"step", r.step},       {"epoch", r.epoch},   {"progress", r.progress},
         {"lr", r.lr},       {"loss", r.loss},       {"norm", r.norm},     {"time_ms", r.time_ms},
         {"tokens", r.tokens}, {"tps", r.tps},       {"sol", r.sol ? nlohmann::json(*r.sol) : nlohmann::json()}});
}

void TrainingLogger::log_eval(const EvalRecord& r) {
  write({{"kind", "eval"},          {"step", r.step},         {"epoch", r.epoch},     {"progress", r.progress},
         {"loss", r.loss},          {"train_loss", r.train_loss}, {"time_ms", r.time_ms}, {"tokens", r.tokens},
         {"tps", r.tps}});
}

void TrainingLogger::log_message(int step, std::string_view text) {
  write({{"kind", "message"}, {"step", step}, {"text", std::string(text)}});
}

std::vector<nlohmann::json> read_log(const std::string& path) {
  std::ifstream in(path);
  LLMQ_REQUIRE(in.is_open(), "cannot read the log file {}", path);
  std::vector<nlohmann::json> records;
  std::string line;
  for (int line_no = 1; std::getline(in, line); ++line_no) {
    if (line.empty()) continue;
    auto record = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    LLMQ_REQUIRE(!record.is_discarded(), "log file {} line {} is not valid JSON (truncated write?)", path, line_no);
    records.push_back(std::move(record));
  }
  return records;
}

void Console::print(std::string_view line) const {
  if (!enabled()) return;
  std::fwrite(line.data(), 1, line.size(), out_);
  if (line.empty() || line.back() != '\n') std::fputc('\n', out_);
  std::fflush(out_);
}

}  // namespace llmq
