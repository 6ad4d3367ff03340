// Training output: the console lines printed per step and per evaluation, the JSON-lines log file
// (one object per line, flushed after every record so a crash loses nothing) and a rank-0-only
// console. Log records, in order of appearance:
//   {"kind":"options", <every option from options_to_json>}
//   {"kind":"gpu", <whatever the caller describes: name, memory, SMs, ...>}
//   {"kind":"train","step","epoch","progress","lr","loss","norm","time_ms","tokens","tps","sol"}
//   {"kind":"eval","step","epoch","progress","loss","train_loss","time_ms","tokens","tps"}
//   {"kind":"message","step","text"}
// `epoch` counts epochs done as a fraction (1.25 = a quarter into the second epoch), `progress` is the
// fraction of the run done (0..1), `tokens` the tokens of this step (all ranks), `tps` tokens/second,
// `sol` the fraction of the GPU's speed of light (null when unknown).
#pragma once
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace llmq {

// "35064" below 100k tokens/s, then " 148k", "1234k", " 15M": always at least 5 characters.
std::string format_tokens_per_second(double tps);

// "[T] step     0 [ 19.9%] | time:  1869 ms | norm   4.315545 | loss   3.282568 | tps 35064 | sol 42.9%"
// epoch_progress and sol_fraction are fractions (0.199 -> 19.9%); "sol n/a" when sol is unknown.
std::string format_train_line(int step, double epoch_progress, double ms, double grad_norm, double loss,
                              double tokens_per_s, std::optional<double> sol_fraction);

// "[V] step     4 [  0.0%] | time:   165 ms | eval   2.945187 | train  3.295834 | tps  148k"
std::string format_eval_line(int step, double epoch_progress, double ms, double eval_loss, double train_loss,
                             double tokens_per_s);

struct TrainRecord {
  int step = 0;
  double epoch = 0;
  double progress = 0;
  double lr = 0;
  double loss = 0;
  double norm = 0;
  double time_ms = 0;
  std::int64_t tokens = 0;
  double tps = 0;
  std::optional<double> sol = std::nullopt;
};

struct EvalRecord {
  int step = 0;
  double epoch = 0;
  double progress = 0;
  double loss = 0;        // validation loss
  double train_loss = 0;  // latest training loss, for comparison
  double time_ms = 0;
  std::int64_t tokens = 0;
  double tps = 0;
};

// Writes the JSON-lines log. Only rank 0 writes; on other ranks every call does nothing.
class TrainingLogger {
 public:
  // Creates the parent directories and opens `path`: truncated for a new run, appended to when
  // `append` (a resumed run continues its log). Throws llmq::Error when it cannot be opened.
  TrainingLogger(const std::string& path, int rank, bool append = false);

  void log_options(const nlohmann::json& options);
  void log_gpu(const nlohmann::json& gpu);
  void log_train(const TrainRecord& r);
  void log_eval(const EvalRecord& r);
  void log_message(int step, std::string_view text);

  const std::string& path() const { return path_; }
  bool enabled() const { return rank_ == 0; }

 private:
  void write(const nlohmann::json& record);

  std::string path_;
  int rank_;
  std::ofstream out_;
};

// Reads a log written by TrainingLogger: one JSON object per non-empty line. Throws llmq::Error
// naming the line when one is not valid JSON.
std::vector<nlohmann::json> read_log(const std::string& path);

// Prints lines on rank 0 only, so N ranks do not print N copies.
class Console {
 public:
  explicit Console(int rank, std::FILE* out = stdout) : rank_(rank), out_(out) {}

  void print(std::string_view line) const;  // adds '\n' unless `line` ends with one; flushes
  template <typename... Args>
  void print(fmt::format_string<Args...> format, Args&&... args) const {
    if (enabled()) print(std::string_view(fmt::format(format, std::forward<Args>(args)...)));
  }
  bool enabled() const { return rank_ == 0; }

 private:
  int rank_;
  std::FILE* out_;
};

}  // namespace llmq
