// DataLoader: cuts token files into samples and hands out batches of (inputs, targets).
//
// A sample is T + 1 consecutive tokens of one file, starting at k * T (windows do not overlap;
// a file of n tokens holds floor((n - 1) / T) samples): inputs are its first T tokens, targets its
// last T. A target whose token is masked in the file (loss masks) becomes -1 (no loss).
//
// One step consumes B * world_size samples of a global order; rank r takes the r-th run of B of
// them, so ranks never share a sample within a step.
//  - Training (shuffle = true): the global order is a permutation of all samples of all files,
//    drawn from (seed, epoch) with a PRNG written here (identical on every platform). An epoch
//    ends when fewer than B * world_size samples are left; next_batch then moves on to the
//    next epoch by itself, so it always returns true.
//  - Evaluation (shuffle = false): samples in file order; next_batch returns false once a full
//    step is no longer available, reset() starts over.
// state() / restore() capture the position so that a resumed run sees bit-for-bit the same batches.
#pragma once
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "training/token_file.h"

namespace llmq {

struct LoaderState {
  std::uint64_t epoch = 0;
  std::uint64_t position = 0;  // samples of the epoch's global order consumed (all ranks together)
  std::uint64_t seed = 0;
  // The dataset the position refers to, checked on restore.
  std::int64_t total_tokens = 0;
  std::int64_t file_count = 0;
  std::int64_t seq_len = 0;
};

void to_json(nlohmann::json& out, const LoaderState& state);
void from_json(const nlohmann::json& in, LoaderState& state);

class DataLoader {
 public:
  // `sources`: token file paths and/or glob(3) patterns such as "data/train-*.bin" (the matches of a
  // pattern are taken in sorted order). Throws when a pattern matches nothing, a file is invalid, or
  // the data cannot fill a single step of B * world_size samples.
  DataLoader(const std::vector<std::string>& sources, int B, int T, int rank, int world_size, std::uint64_t seed,
             bool shuffle);
  DataLoader(const std::string& source, int B, int T, int rank, int world_size, std::uint64_t seed, bool shuffle)
      : DataLoader(std::vector<std::string>{source}, B, T, rank, world_size, seed, shuffle) {}

  // Fills this rank's B x T inputs and targets (host memory, row-major). Returns false only in eval
  // mode when the data is exhausted (nothing is written then).
  bool next_batch(std::int32_t* inputs, std::int32_t* targets);
  bool has_next() const;  // eval: another full step is available; training: always true
  void reset();           // back to the start of the current epoch's order

  // Throws when any file holds tokens outside a model vocabulary of `model_vocab` rows.
  void check_vocab(std::int32_t model_vocab) const;

  LoaderState state() const;
  // Continues from a state saved by state() (any rank, any world size), including its shuffle seed.
  // Throws when the state belongs to a different dataset or sequence length.
  void restore(const LoaderState& state);

  std::uint64_t epoch() const { return epoch_; }
  double epoch_progress() const;  // fraction of this epoch's samples consumed, in [0, 1)
  std::uint64_t samples_per_epoch() const { return sample_count_; }
  std::uint64_t steps_per_epoch() const { return sample_count_ / samples_per_step(); }
  std::int64_t total_tokens() const { return total_tokens_; }
  std::int32_t vocab_size() const;  // the largest vocabulary among the files
  const std::vector<TokenFile>& files() const { return files_; }
  int batch_size() const { return B_; }
  int seq_len() const { return T_; }

 private:
  std::uint64_t samples_per_step() const { return static_cast<std::uint64_t>(B_) * world_size_; }
  void open_files(const std::vector<std::string>& sources);
  void check_enough_samples() const;
  void build_order();
  void start_epoch(std::uint64_t epoch);
  void copy_sample(std::uint64_t sample, std::int32_t* inputs, std::int32_t* targets) const;

  int B_, T_, rank_, world_size_;
  std::uint64_t seed_;
  bool shuffle_;
  std::vector<TokenFile> files_;
  std::vector<std::uint64_t> first_sample_;  // per file: global index of its first sample; back() = total
  std::uint64_t sample_count_ = 0;
  std::int64_t total_tokens_ = 0;
  std::vector<std::uint32_t> order_;  // this epoch's permutation of samples (training only)
  std::uint64_t epoch_ = 0;
  std::uint64_t position_ = 0;
};

// Expands file paths and glob patterns into a list of files; throws naming a pattern that matches nothing.
std::vector<std::string> resolve_token_files(const std::vector<std::string>& sources);

}  // namespace llmq
