// DataLoader: sample layout, deterministic shuffling, rank sharding and resumable position
// (see data_loader.h for the rules).
#include "training/data_loader.h"

#include <glob.h>

#include <algorithm>
#include <limits>
#include <nlohmann/json.hpp>
#include <utility>

#include "core/errors.h"

namespace llmq {

namespace {

// splitmix64 (Steele, Lea, Flood): a tiny 64-bit PRNG with a fixed definition, so the shuffle
// is the same with every compiler and standard library (unlike std::shuffle / distributions).
class SplitMix64 {
 public:
  explicit SplitMix64(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, bound) without modulo bias (Lemire's multiply-and-reject).
  std::uint64_t below(std::uint64_t bound) {
    unsigned __int128 product = static_cast<unsigned __int128>(next()) * bound;
    auto low = static_cast<std::uint64_t>(product);
    if (low < bound) {
      const std::uint64_t threshold = (0 - bound) % bound;
      while (low < threshold) {
        product = static_cast<unsigned __int128>(next()) * bound;
        low = static_cast<std::uint64_t>(product);
      }
    }
    return static_cast<std::uint64_t>(product >> 64);
  }

 private:
  std::uint64_t state_;
};

// Seed of one epoch's shuffle: the run seed and the epoch number, mixed so that neighbouring
// seeds or epochs give unrelated streams.
std::uint64_t epoch_seed(std::uint64_t seed, std::uint64_t epoch) {
  SplitMix64 mixer(seed ^ (0xD1B54A32D192ED03ull * (epoch + 1)));
  return mixer.next();
}

bool is_glob_pattern(const std::string& source) {
  return source.find_first_of("*?[{~") != std::string::npos;
}

std::vector<std::string> expand_pattern(const std::string& pattern) {
  glob_t matches{};
  const int rc = glob(pattern.c_str(), GLOB_TILDE | GLOB_BRACE | GLOB_ERR, nullptr, &matches);
  std::vector<std::string> files;
  if (rc == 0) files.assign(matches.gl_pathv, matches.gl_pathv + matches.gl_pathc);
  globfree(&matches);
  LLMQ_REQUIRE(rc != GLOB_NOMATCH, "no token file matches '{}'; check the path or create token files with "
               "scripts/tokenize_data.py", pattern);
  LLMQ_REQUIRE(rc == 0, "token file pattern '{}': cannot list the matching files (glob error {})", pattern, rc);
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace

void to_json(nlohmann::json& out, const LoaderState& state) {
  out = nlohmann::json{{"epoch", state.epoch},          {"position", state.position},
                       {"seed", state.seed},            {"total_tokens", state.total_tokens},
                       {"file_count", state.file_count}, {"seq_len", state.seq_len}};
}

void from_json(const nlohmann::json& in, LoaderState& state) {
  try {
    in.at("epoch").get_to(state.epoch);
    in.at("position").get_to(state.position);
    in.at("seed").get_to(state.seed);
    in.at("total_tokens").get_to(state.total_tokens);
    in.at("file_count").get_to(state.file_count);
    in.at("seq_len").get_to(state.seq_len);
  } catch (const nlohmann::json::exception& e) {
    throw Error(fmt::format("saved data-loader state {} is incomplete ({}): pass --new-data to start the data "
                            "from its beginning",
                            in.dump(), e.what()));
  }
}

std::vector<std::string> resolve_token_files(const std::vector<std::string>& sources) {
  LLMQ_REQUIRE(!sources.empty(), "no token files given; create them with scripts/tokenize_data.py");
  std::vector<std::string> files;
  for (const std::string& source : sources) {
    if (is_glob_pattern(source)) {
      for (std::string& match : expand_pattern(source)) files.push_back(std::move(match));
    } else {
      files.push_back(source);  // a missing file is reported by TokenFile
    }
  }
  return files;
}

DataLoader::DataLoader(const std::vector<std::string>& sources, int B, int T, int rank, int world_size,
                       std::uint64_t seed, bool shuffle)
    : B_(B), T_(T), rank_(rank), world_size_(world_size), seed_(seed), shuffle_(shuffle) {
  LLMQ_REQUIRE(B > 0 && T > 0, "data loader: batch size {} and sequence length {} must be positive", B, T);
  LLMQ_REQUIRE(world_size > 0 && rank >= 0 && rank < world_size, "data loader: rank {} outside world size {}", rank,
               world_size);
  open_files(sources);
  check_enough_samples();
  start_epoch(0);
}

void DataLoader::open_files(const std::vector<std::string>& sources) {
  first_sample_.push_back(0);
  for (const std::string& path : resolve_token_files(sources)) {
    TokenFile& file = files_.emplace_back(path);
    const std::int64_t samples = file.token_count() > 0 ? (file.token_count() - 1) / T_ : 0;
    total_tokens_ += file.token_count();
    first_sample_.push_back(first_sample_.back() + static_cast<std::uint64_t>(samples));
  }
  sample_count_ = first_sample_.back();
  LLMQ_REQUIRE(!shuffle_ || sample_count_ <= std::numeric_limits<std::uint32_t>::max(),
               "training data has {} samples of {} tokens, more than the 2^32 this loader shuffles: "
               "raise --seq-len or use fewer files",
               sample_count_, T_ + 1);
}

void DataLoader::check_enough_samples() const {
  const std::string what = shuffle_ ? "train" : "eval";
  const std::string where = files_.size() == 1 ? fmt::format("file {}", files_[0].path())
                                               : fmt::format("files ({} of them)", files_.size());
  LLMQ_REQUIRE(sample_count_ >= samples_per_step(),
               "{} {} has {} tokens = {} samples of seq-len + 1 = {} tokens; a batch needs batch-size x ranks = "
               "{} x {} = {} samples (B*(T+1) = {} tokens per rank): lower --batch-size or --seq-len, or use more data",
               what, where, total_tokens_, sample_count_, T_ + 1, B_, world_size_, samples_per_step(),
               static_cast<std::int64_t>(B_) * (T_ + 1));
}

void DataLoader::start_epoch(std::uint64_t epoch) {
  epoch_ = epoch;
  position_ = 0;
  if (shuffle_) build_order();
}

// Fisher-Yates over all samples of all files.
void DataLoader::build_order() {
  order_.resize(sample_count_);
  for (std::uint64_t i = 0; i < sample_count_; ++i) order_[i] = static_cast<std::uint32_t>(i);
  SplitMix64 rng(epoch_seed(seed_, epoch_));
  for (std::uint64_t i = sample_count_; i > 1; --i) {
    const std::uint64_t j = rng.below(i);
    std::swap(order_[i - 1], order_[j]);
  }
}

bool DataLoader::has_next() const { return shuffle_ || position_ + samples_per_step() <= sample_count_; }

void DataLoader::reset() { position_ = 0; }

bool DataLoader::next_batch(std::int32_t* inputs, std::int32_t* targets) {
  if (position_ + samples_per_step() > sample_count_) {
    if (!shuffle_) return false;
    start_epoch(epoch_ + 1);
  }
  const std::uint64_t first = position_ + static_cast<std::uint64_t>(rank_) * B_;
  for (int b = 0; b < B_; ++b) {
    const std::uint64_t slot = first + b;
    const std::uint64_t sample = shuffle_ ? order_[slot] : slot;
    copy_sample(sample, inputs + static_cast<std::size_t>(b) * T_, targets + static_cast<std::size_t>(b) * T_);
  }
  position_ += samples_per_step();
  return true;
}

void DataLoader::copy_sample(std::uint64_t sample, std::int32_t* inputs, std::int32_t* targets) const {
  const auto next_file = std::upper_bound(first_sample_.begin(), first_sample_.end(), sample);
  const auto file_index = static_cast<std::size_t>(next_file - first_sample_.begin()) - 1;
  const TokenFile& file = files_[file_index];
  const std::int64_t start = static_cast<std::int64_t>(sample - first_sample_[file_index]) * T_;
  const std::int32_t* tokens = file.tokens() + start;
  std::copy(tokens, tokens + T_, inputs);
  std::copy(tokens + 1, tokens + 1 + T_, targets);
  if (file.has_masks()) {
    for (int t = 0; t < T_; ++t) {
      if (file.is_masked(start + 1 + t)) targets[t] = -1;
    }
  }
}

void DataLoader::check_vocab(std::int32_t model_vocab) const {
  for (const TokenFile& file : files_) file.check_vocab(model_vocab);
}

std::int32_t DataLoader::vocab_size() const {
  std::int32_t vocab = 0;
  for (const TokenFile& file : files_) vocab = std::max(vocab, file.vocab_size());
  return vocab;
}

double DataLoader::epoch_progress() const {
  return static_cast<double>(position_) / static_cast<double>(sample_count_);
}

LoaderState DataLoader::state() const {
  return LoaderState{.epoch = epoch_,
                     .position = position_,
                     .seed = seed_,
                     .total_tokens = total_tokens_,
                     .file_count = static_cast<std::int64_t>(files_.size()),
                     .seq_len = T_};
}

void DataLoader::restore(const LoaderState& state) {
  LLMQ_REQUIRE(state.total_tokens == total_tokens_ && state.file_count == static_cast<std::int64_t>(files_.size()),
               "the saved data position belongs to a different dataset ({} tokens in {} files), the data given now "
               "has {} tokens in {} files: pass --new-data to start the new data from its beginning",
               state.total_tokens, state.file_count, total_tokens_, files_.size());
  LLMQ_REQUIRE(state.seq_len == T_,
               "the saved data position was taken with --seq-len {}, now {}: use the same sequence length, or pass "
               "--new-data to start the data from its beginning",
               state.seq_len, T_);
  LLMQ_REQUIRE(state.position <= sample_count_, "the saved data position {} is past the {} samples of the data",
               state.position, sample_count_);
  seed_ = state.seed;
  start_epoch(state.epoch);
  position_ = state.position;
}

}  // namespace llmq
