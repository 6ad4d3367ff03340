// Token files (format, validation, llm.c and LLM.Q compatibility) and the DataLoader (sample
// layout, masks, deterministic shuffle, rank sharding, epochs, resumable state).
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <vector>

#include "test_util.h"
#include "core/errors.h"
#include "training/data_loader.h"
#include "training/token_file.h"

using namespace llmq;
namespace fs = std::filesystem;

namespace {

using llmq::test::TempDir;

// Tokens that name their own place: file f, position p holds f * kFileStride + p.
constexpr std::int32_t kFileStride = 1'000'000;
constexpr std::int32_t kBigVocab = 1 << 26;

std::vector<std::int32_t> positional_tokens(int file_index, int count) {
  std::vector<std::int32_t> tokens(count);
  for (int p = 0; p < count; ++p) tokens[p] = file_index * kFileStride + p;
  return tokens;
}

// Raw bytes of a file: a 256-int32 header followed by a payload.
void write_raw(const std::string& path, const std::vector<std::int32_t>& header, const void* payload,
               std::size_t payload_bytes) {
  std::vector<char> bytes(1024 + payload_bytes, 0);
  std::memcpy(bytes.data(), header.data(), header.size() * sizeof(std::int32_t));
  if (payload_bytes > 0) std::memcpy(bytes.data() + 1024, payload, payload_bytes);
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::vector<std::int32_t> bintok_header(int version, int bytes_per_token, int count, int vocab, int masks) {
  std::vector<std::int32_t> header(7);
  std::memcpy(header.data(), "BIN.TOK\n", 8);
  header[2] = version;
  header[3] = bytes_per_token;
  header[4] = count;
  header[5] = vocab;
  header[6] = masks;
  return header;
}

// Runs `fn`, expects llmq::Error, and returns its message.
template <typename Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected llmq::Error";
  return "";
}

// One batch of a loader, plus the global sample ids (file, window) it holds, read from inputs[0] of each row.
struct Batch {
  std::vector<std::int32_t> inputs, targets;
  std::vector<std::int64_t> samples;
};

Batch take_batch(DataLoader& loader) {
  const int B = loader.batch_size(), T = loader.seq_len();
  Batch batch{std::vector<std::int32_t>(B * T, -7), std::vector<std::int32_t>(B * T, -7), {}};
  EXPECT_TRUE(loader.next_batch(batch.inputs.data(), batch.targets.data()));
  for (int b = 0; b < B; ++b) {
    const std::int32_t first = batch.inputs[b * T];
    batch.samples.push_back(static_cast<std::int64_t>(first / kFileStride) * kFileStride + (first % kFileStride) / T);
  }
  return batch;
}

}  // namespace

// ---------------------------------------------------------------- token files

TEST(TokenFile, WriteThenReadRoundTrip) {
  TempDir dir;
  const std::vector<std::int32_t> tokens = {5, 0, 99, 42, 7, 98, 1};
  write_token_file(dir.file("a.bin"), tokens, 100);
  TokenFile file(dir.file("a.bin"));
  EXPECT_EQ(file.format(), TokenFileFormat::BinTok);
  EXPECT_EQ(file.token_count(), 7);
  EXPECT_EQ(file.vocab_size(), 100);
  EXPECT_EQ(file.max_token(), 99);
  EXPECT_FALSE(file.has_masks());
  EXPECT_FALSE(file.is_masked(3));
  EXPECT_EQ(std::vector<std::int32_t>(file.tokens(), file.tokens() + 7), tokens);
  EXPECT_EQ(fs::file_size(dir.file("a.bin")), 1024u + 7 * 4);

  // Header slots as LLM.Q lays them out.
  std::ifstream raw(dir.file("a.bin"), std::ios::binary);
  std::int32_t header[256];
  raw.read(reinterpret_cast<char*>(header), sizeof(header));
  EXPECT_EQ(std::memcmp(header, "BIN.TOK\n", 8), 0);
  EXPECT_EQ(header[2], 2);
  EXPECT_EQ(header[3], 4);
  EXPECT_EQ(header[4], 7);
  EXPECT_EQ(header[5], 100);
  EXPECT_EQ(header[6], 0);
}

TEST(TokenFile, EmptyFileHasNoTokens) {
  TempDir dir;
  write_token_file(dir.file("empty.bin"), {}, 10);
  TokenFile file(dir.file("empty.bin"));
  EXPECT_EQ(file.token_count(), 0);
  EXPECT_EQ(file.max_token(), -1);
}

TEST(TokenFile, LossMasksRoundTripWithPartialLastByte) {
  TempDir dir;
  const int n = 21;  // 3 mask bytes, the last one partial
  std::vector<std::int32_t> tokens(n);
  std::vector<std::uint8_t> mask(n);
  for (int i = 0; i < n; ++i) {
    tokens[i] = i;
    mask[i] = (i % 3 == 0 || i == 20) ? 1 : 0;
  }
  write_token_file(dir.file("m.bin"), tokens, 32, mask);
  EXPECT_EQ(fs::file_size(dir.file("m.bin")), 1024u + n * 4 + 3);
  TokenFile file(dir.file("m.bin"));
  ASSERT_TRUE(file.has_masks());
  for (int i = 0; i < n; ++i) EXPECT_EQ(file.is_masked(i), mask[i] == 0) << "position " << i;
}

TEST(TokenFile, MissingFileSaysHowToCreateOne) {
  TempDir dir;
  const std::string msg = error_of([&] { TokenFile file(dir.file("nope.bin")); });
  EXPECT_NE(msg.find("nope.bin not found"), std::string::npos) << msg;
  EXPECT_NE(msg.find("scripts/tokenize_data.py"), std::string::npos) << msg;
}

TEST(TokenFile, FileShorterThanHeaderIsRejected) {
  TempDir dir;
  std::ofstream(dir.file("short.bin"), std::ios::binary) << "BIN.TOK\n1234";
  const std::string msg = error_of([&] { TokenFile file(dir.file("short.bin")); });
  EXPECT_NE(msg.find("shorter than the 1024-byte header"), std::string::npos) << msg;
}

TEST(TokenFile, BadMagicIsRejected) {
  TempDir dir;
  std::vector<std::int32_t> header = bintok_header(2, 4, 0, 10, 0);
  std::memcpy(header.data(), "GGUF\0\0\0\0", 8);
  write_raw(dir.file("magic.bin"), header, nullptr, 0);
  const std::string msg = error_of([&] { TokenFile file(dir.file("magic.bin")); });
  EXPECT_NE(msg.find("not a token file: magic 'GGUF\\x00"), std::string::npos) << msg;
  EXPECT_NE(msg.find("expected BIN.TOK"), std::string::npos) << msg;
}

TEST(TokenFile, UnsupportedVersionAndTokenWidthAreRejected) {
  TempDir dir;
  const std::int32_t token = 1;
  write_raw(dir.file("v3.bin"), bintok_header(3, 4, 1, 10, 0), &token, 4);
  EXPECT_NE(error_of([&] { TokenFile f(dir.file("v3.bin")); }).find("unsupported BIN.TOK version 3"), std::string::npos);
  write_raw(dir.file("w2.bin"), bintok_header(2, 2, 2, 10, 0), &token, 4);
  EXPECT_NE(error_of([&] { TokenFile f(dir.file("w2.bin")); }).find("unsupported bytes per token 2"), std::string::npos);
  write_raw(dir.file("flag.bin"), bintok_header(2, 4, 1, 10, 5), &token, 4);
  EXPECT_NE(error_of([&] { TokenFile f(dir.file("flag.bin")); }).find("has-masks flag 5"), std::string::npos);
}

TEST(TokenFile, SizeMismatchReportsBothSizes) {
  TempDir dir;
  const std::vector<std::int32_t> tokens = positional_tokens(0, 10);
  write_raw(dir.file("trunc.bin"), bintok_header(2, 4, 12, 100, 0), tokens.data(), 40);
  const std::string msg = error_of([&] { TokenFile f(dir.file("trunc.bin")); });
  EXPECT_NE(msg.find("1072 bytes expected from header"), std::string::npos) << msg;
  EXPECT_NE(msg.find("1064 on disk (truncated?)"), std::string::npos) << msg;

  // Masks announced but missing count too.
  write_raw(dir.file("nomask.bin"), bintok_header(2, 4, 10, 100, 1), tokens.data(), 40);
  EXPECT_NE(error_of([&] { TokenFile f(dir.file("nomask.bin")); }).find("1066 bytes expected"), std::string::npos);

  write_raw(dir.file("long.bin"), bintok_header(2, 4, 9, 100, 0), tokens.data(), 40);
  EXPECT_NE(error_of([&] { TokenFile f(dir.file("long.bin")); }).find("extra bytes"), std::string::npos);
}

TEST(TokenFile, TokenOutsideHeaderVocabNamesPositionAndValue) {
  TempDir dir;
  std::vector<std::int32_t> tokens = positional_tokens(0, 5000);
  for (auto& t : tokens) t %= 50;
  tokens[3217] = 50;
  tokens[4000] = 77;
  write_raw(dir.file("vocab.bin"), bintok_header(2, 4, 5000, 50, 0), tokens.data(), tokens.size() * 4);
  const std::string msg = error_of([&] { TokenFile f(dir.file("vocab.bin")); });
  EXPECT_NE(msg.find("token 50 at position 3217"), std::string::npos) << msg;
  EXPECT_NE(msg.find("vocabulary of 50"), std::string::npos) << msg;

  tokens[3217] = -3;
  write_raw(dir.file("neg.bin"), bintok_header(2, 4, 5000, 100, 0), tokens.data(), tokens.size() * 4);
  EXPECT_NE(error_of([&] { TokenFile f(dir.file("neg.bin")); }).find("token -3 at position 3217"), std::string::npos);
}

TEST(TokenFile, CheckVocabAgainstModel) {
  TempDir dir;
  write_token_file(dir.file("a.bin"), std::vector<std::int32_t>{1, 2, 150}, 200);
  TokenFile file(dir.file("a.bin"));
  EXPECT_NO_THROW(file.check_vocab(200));
  EXPECT_NO_THROW(file.check_vocab(300));
  EXPECT_NE(error_of([&] { file.check_vocab(199); }).find("tokenized for a vocabulary of 200, larger than the model's 199"),
            std::string::npos);
  EXPECT_NE(error_of([&] { file.check_vocab(100); }).find("token 150 at position 2"), std::string::npos);
}

// LLM.Q's writer pads the header with '*', stores the HF tokenizer's vocab_size (151643 for Qwen2.5,
// without <|endoftext|> = 151643 that ends every document) and packs masks with numpy (bit order little).
TEST(TokenFile, ReadsFilesOfTheSeedTool) {
  TempDir dir;
  const std::vector<std::int32_t> tokens = {9707, 1879, 151643, 40, 151643};
  std::vector<std::int32_t> header = bintok_header(2, 4, 5, 151643, 1);
  std::vector<char> bytes(1024 + 20 + 1, '*');
  bytes[1023] = '\n';
  std::memcpy(bytes.data(), header.data(), header.size() * 4);
  std::memcpy(bytes.data() + 1024, tokens.data(), 20);
  bytes[1044] = 0b00011010;  // numpy.packbits([0, 1, 0, 1, 1], bitorder='little')
  std::ofstream(dir.file("seed.bin"), std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));

  TokenFile file(dir.file("seed.bin"));
  EXPECT_EQ(file.token_count(), 5);
  EXPECT_EQ(file.vocab_size(), 151644);
  EXPECT_NO_THROW(file.check_vocab(151936));
  EXPECT_TRUE(file.is_masked(0));
  EXPECT_FALSE(file.is_masked(1));
  EXPECT_TRUE(file.is_masked(2));
  EXPECT_FALSE(file.is_masked(3));
  EXPECT_FALSE(file.is_masked(4));
}

TEST(TokenFile, ReadsLlmcFiles) {
  TempDir dir;
  const std::vector<std::uint16_t> narrow = {50256, 15496, 995, 0, 65535};
  write_raw(dir.file("gpt2.bin"), {TokenFile::kLlmcMagic, 1, 5}, narrow.data(), narrow.size() * 2);
  TokenFile gpt2(dir.file("gpt2.bin"));
  EXPECT_EQ(gpt2.format(), TokenFileFormat::LlmcUint16);
  EXPECT_EQ(std::vector<std::int32_t>(gpt2.tokens(), gpt2.tokens() + 5),
            (std::vector<std::int32_t>{50256, 15496, 995, 0, 65535}));
  EXPECT_EQ(gpt2.vocab_size(), 65536);

  const std::vector<std::uint32_t> wide = {128000, 9906, 1917};
  write_raw(dir.file("llama.bin"), {TokenFile::kLlmcMagic, 2, 3}, wide.data(), wide.size() * 4);
  TokenFile llama(dir.file("llama.bin"));
  EXPECT_EQ(llama.format(), TokenFileFormat::LlmcUint32);
  EXPECT_EQ(llama.tokens()[0], 128000);
  EXPECT_FALSE(llama.has_masks());

  write_raw(dir.file("llmc_trunc.bin"), {TokenFile::kLlmcMagic, 1, 6}, narrow.data(), narrow.size() * 2);
  EXPECT_NE(error_of([&] { TokenFile f(dir.file("llmc_trunc.bin")); }).find("1036 bytes expected"), std::string::npos);
  write_raw(dir.file("llmc_v9.bin"), {TokenFile::kLlmcMagic, 9, 5}, narrow.data(), narrow.size() * 2);
  EXPECT_NE(error_of([&] { TokenFile f(dir.file("llmc_v9.bin")); }).find("llm.c token file version 9"), std::string::npos);
}

// ---------------------------------------------------------------- data loader

TEST(DataLoader, EvalGivesNonOverlappingWindowsInFileOrder) {
  TempDir dir;
  write_token_file(dir.file("a.bin"), positional_tokens(1, 26), kBigVocab);  // (26-1)/4 = 6 samples
  write_token_file(dir.file("b.bin"), positional_tokens(2, 9), kBigVocab);   // 2 samples
  DataLoader loader({dir.file("a.bin"), dir.file("b.bin")}, 2, 4, 0, 1, 0, /*shuffle=*/false);
  EXPECT_EQ(loader.samples_per_epoch(), 8u);
  EXPECT_EQ(loader.total_tokens(), 35);

  const Batch first = take_batch(loader);
  const std::vector<std::int32_t> want_inputs = {1000000, 1000001, 1000002, 1000003, 1000004, 1000005, 1000006, 1000007};
  const std::vector<std::int32_t> want_targets = {1000001, 1000002, 1000003, 1000004, 1000005, 1000006, 1000007, 1000008};
  EXPECT_EQ(first.inputs, want_inputs);
  EXPECT_EQ(first.targets, want_targets);
  take_batch(loader);
  take_batch(loader);
  ASSERT_TRUE(loader.has_next());
  const Batch last = take_batch(loader);
  EXPECT_EQ(last.inputs[0], 2 * kFileStride + 0);
  EXPECT_EQ(last.targets[7], 2 * kFileStride + 8);  // the last token of b.bin is used as a target only

  EXPECT_FALSE(loader.has_next());
  std::vector<std::int32_t> in(8, 123), tg(8, 123);
  EXPECT_FALSE(loader.next_batch(in.data(), tg.data()));
  EXPECT_EQ(in[0], 123);  // untouched
  loader.reset();
  EXPECT_EQ(take_batch(loader).inputs, want_inputs);
}

TEST(DataLoader, MaskedTargetsBecomeMinusOne) {
  TempDir dir;
  const std::vector<std::int32_t> tokens = {10, 11, 12, 13, 14, 15, 16, 17, 18};
  const std::vector<std::uint8_t> loss = {0, 0, 1, 1, 0, 1, 1, 1, 0};
  write_token_file(dir.file("sft.bin"), tokens, 100, loss);
  DataLoader loader(dir.file("sft.bin"), 1, 4, 0, 1, 0, false);
  std::vector<std::int32_t> in(4), tg(4);
  ASSERT_TRUE(loader.next_batch(in.data(), tg.data()));
  EXPECT_EQ(in, (std::vector<std::int32_t>{10, 11, 12, 13}));  // inputs are never masked
  EXPECT_EQ(tg, (std::vector<std::int32_t>{-1, 12, 13, -1}));
  ASSERT_TRUE(loader.next_batch(in.data(), tg.data()));
  EXPECT_EQ(in, (std::vector<std::int32_t>{14, 15, 16, 17}));
  EXPECT_EQ(tg, (std::vector<std::int32_t>{15, 16, 17, -1}));
}

TEST(DataLoader, GlobPatternsResolveSortedAndMissingMatchesNameThePattern) {
  TempDir dir;
  write_token_file(dir.file("train-001.bin"), positional_tokens(2, 9), kBigVocab);
  write_token_file(dir.file("train-000.bin"), positional_tokens(1, 9), kBigVocab);
  write_token_file(dir.file("other.bin"), positional_tokens(3, 9), kBigVocab);
  DataLoader loader(dir.file("train-*.bin"), 1, 4, 0, 1, 0, false);
  ASSERT_EQ(loader.files().size(), 2u);
  EXPECT_EQ(loader.files()[0].path(), dir.file("train-000.bin"));
  EXPECT_EQ(take_batch(loader).inputs[0], 1 * kFileStride);

  const std::string pattern = dir.file("valid-*.bin");
  const std::string msg = error_of([&] { DataLoader bad(pattern, 1, 4, 0, 1, 0, false); });
  EXPECT_NE(msg.find("no token file matches '" + pattern + "'"), std::string::npos) << msg;
  EXPECT_NE(error_of([&] { DataLoader bad(dir.file("missing.bin"), 1, 4, 0, 1, 0, true); }).find("not found"),
            std::string::npos);
}

TEST(DataLoader, TooFewTokensForOneBatch) {
  TempDir dir;
  write_token_file(dir.file("tiny.bin"), positional_tokens(0, 40), kBigVocab);  // 39 / 8 = 4 samples
  EXPECT_NO_THROW(DataLoader(dir.file("tiny.bin"), 4, 8, 0, 1, 0, true));
  const std::string msg = error_of([&] { DataLoader loader(dir.file("tiny.bin"), 5, 8, 0, 1, 0, true); });
  EXPECT_NE(msg.find("train file " + dir.file("tiny.bin") + " has 40 tokens"), std::string::npos) << msg;
  EXPECT_NE(msg.find("lower --batch-size or --seq-len"), std::string::npos) << msg;
  // Two ranks need twice the samples.
  EXPECT_NE(error_of([&] { DataLoader loader(dir.file("tiny.bin"), 4, 8, 1, 2, 0, true); }).find("4 x 2 = 8 samples"),
            std::string::npos);
}

TEST(DataLoader, ShuffleIsADeterministicPermutationOfAllFiles) {
  TempDir dir;
  write_token_file(dir.file("a.bin"), positional_tokens(1, 8 * 4 + 1), kBigVocab);
  write_token_file(dir.file("b.bin"), positional_tokens(2, 8 * 4 + 1), kBigVocab);
  auto epoch_order = [&](std::uint64_t seed) {
    DataLoader loader(dir.file("*.bin"), 2, 4, 0, 1, seed, true);
    std::vector<std::int64_t> order;
    for (int step = 0; step < 8; ++step) {
      for (std::int64_t s : take_batch(loader).samples) order.push_back(s);
    }
    EXPECT_EQ(loader.epoch(), 0u);
    return order;
  };
  const std::vector<std::int64_t> first = epoch_order(1234);
  EXPECT_EQ(first, epoch_order(1234));
  EXPECT_NE(first, epoch_order(1235));

  std::set<std::int64_t> seen(first.begin(), first.end());
  EXPECT_EQ(seen.size(), 16u);  // every sample exactly once
  EXPECT_EQ(*seen.begin(), 1 * kFileStride + 0);
  EXPECT_EQ(*seen.rbegin(), 2 * kFileStride + 7);
  std::vector<std::int64_t> file_order(first.begin(), first.end());
  std::sort(file_order.begin(), file_order.end());
  EXPECT_NE(first, file_order);  // actually shuffled, and across files
}

// The order depends only on our own PRNG: a change of compiler or standard library must not move it
// (resumed runs rely on this). Golden values: splitmix64 + Lemire + Fisher-Yates, cross-checked
// against an independent Python model of the same algorithm.
TEST(DataLoader, ShuffleOrderIsPinned) {
  TempDir dir;
  write_token_file(dir.file("a.bin"), positional_tokens(0, 10 * 2 + 1), kBigVocab);  // 10 samples of T = 2
  DataLoader loader(dir.file("a.bin"), 10, 2, 0, 1, 42, true);
  const Batch batch = take_batch(loader);
  const std::vector<std::int64_t> golden = {8, 9, 4, 3, 7, 1, 5, 6, 0, 2};
  EXPECT_EQ(batch.samples, golden);
}

TEST(DataLoader, RanksTakeDisjointPartsOfEachStep) {
  TempDir dir;
  write_token_file(dir.file("a.bin"), positional_tokens(1, 24 * 3 + 1), kBigVocab);  // 24 samples
  DataLoader single(dir.file("a.bin"), 6, 3, 0, 1, 7, true);
  DataLoader rank0(dir.file("a.bin"), 3, 3, 0, 2, 7, true);
  DataLoader rank1(dir.file("a.bin"), 3, 3, 1, 2, 7, true);
  std::set<std::int64_t> epoch_samples;
  for (int step = 0; step < 4; ++step) {
    const Batch whole = take_batch(single), part0 = take_batch(rank0), part1 = take_batch(rank1);
    std::set<std::int64_t> s0(part0.samples.begin(), part0.samples.end());
    std::set<std::int64_t> s1(part1.samples.begin(), part1.samples.end());
    for (std::int64_t s : s1) EXPECT_EQ(s0.count(s), 0u) << "step " << step << " sample " << s << " on both ranks";
    std::set<std::int64_t> both = s0;
    both.insert(s1.begin(), s1.end());
    EXPECT_EQ(both, std::set<std::int64_t>(whole.samples.begin(), whole.samples.end())) << "step " << step;
    epoch_samples.insert(both.begin(), both.end());
  }
  EXPECT_EQ(epoch_samples.size(), 24u);
}

TEST(DataLoader, WrapsIntoANewlyShuffledEpoch) {
  TempDir dir;
  write_token_file(dir.file("a.bin"), positional_tokens(1, 7 * 4 + 1), kBigVocab);  // 7 samples, 3 steps of 2
  DataLoader loader(dir.file("a.bin"), 2, 4, 0, 1, 99, true);
  EXPECT_EQ(loader.steps_per_epoch(), 3u);
  std::vector<std::int64_t> epoch0, epoch1;
  for (int step = 0; step < 3; ++step) {
    EXPECT_EQ(loader.epoch(), 0u);
    EXPECT_NEAR(loader.epoch_progress(), step * 2 / 7.0, 1e-12);
    for (std::int64_t s : take_batch(loader).samples) epoch0.push_back(s);
  }
  for (int step = 0; step < 3; ++step) {
    for (std::int64_t s : take_batch(loader).samples) epoch1.push_back(s);
    EXPECT_EQ(loader.epoch(), 1u);
  }
  EXPECT_EQ(std::set<std::int64_t>(epoch0.begin(), epoch0.end()).size(), 6u);
  EXPECT_EQ(std::set<std::int64_t>(epoch1.begin(), epoch1.end()).size(), 6u);
  EXPECT_NE(epoch0, epoch1);  // the epoch number is mixed into the shuffle
  take_batch(loader);
  EXPECT_EQ(loader.epoch(), 2u);
  EXPECT_TRUE(loader.has_next());
}

TEST(DataLoader, RestoredStateContinuesBitForBit) {
  TempDir dir;
  write_token_file(dir.file("a.bin"), positional_tokens(1, 50), kBigVocab);
  write_token_file(dir.file("b.bin"), positional_tokens(2, 37), kBigVocab);
  DataLoader original(dir.file("*.bin"), 2, 5, 1, 2, 2024, true);  // 9 + 7 samples, 4 steps per epoch
  for (int step = 0; step < 6; ++step) take_batch(original);       // into the second epoch
  const nlohmann::json saved = original.state();
  EXPECT_EQ(saved.at("epoch"), 1);

  DataLoader resumed(dir.file("*.bin"), 2, 5, 1, 2, /*seed=*/1, true);
  resumed.restore(saved.get<LoaderState>());
  EXPECT_EQ(resumed.epoch(), 1u);
  EXPECT_DOUBLE_EQ(resumed.epoch_progress(), original.epoch_progress());
  for (int step = 0; step < 7; ++step) {
    const Batch want = take_batch(original), got = take_batch(resumed);
    EXPECT_EQ(got.inputs, want.inputs) << "step " << step;
    EXPECT_EQ(got.targets, want.targets) << "step " << step;
  }
  EXPECT_EQ(resumed.epoch(), original.epoch());
}

TEST(DataLoader, RestoringAnotherDatasetsStateSuggestsNewData) {
  TempDir dir;
  write_token_file(dir.file("a.bin"), positional_tokens(1, 50), kBigVocab);
  write_token_file(dir.file("b.bin"), positional_tokens(2, 60), kBigVocab);
  DataLoader a(dir.file("a.bin"), 2, 5, 0, 1, 0, true);
  DataLoader b(dir.file("b.bin"), 2, 5, 0, 1, 0, true);
  const std::string msg = error_of([&] { b.restore(a.state()); });
  EXPECT_NE(msg.find("different dataset (50 tokens in 1 files)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--new-data"), std::string::npos) << msg;
  DataLoader a_short(dir.file("a.bin"), 2, 4, 0, 1, 0, true);
  EXPECT_NE(error_of([&] { a_short.restore(a.state()); }).find("--seq-len 5"), std::string::npos);
  const nlohmann::json incomplete = {{"epoch", 1}, {"position", 2}};
  EXPECT_NE(error_of([&] { incomplete.get<LoaderState>(); }).find("incomplete"), std::string::npos);
}

TEST(DataLoader, CheckVocabCoversEveryFile) {
  TempDir dir;
  write_token_file(dir.file("a.bin"), std::vector<std::int32_t>(20, 3), 100);
  write_token_file(dir.file("b.bin"), std::vector<std::int32_t>(20, 3), 300);
  DataLoader loader(dir.file("*.bin"), 1, 4, 0, 1, 0, false);
  EXPECT_EQ(loader.vocab_size(), 300);
  EXPECT_NO_THROW(loader.check_vocab(300));
  EXPECT_NE(error_of([&] { loader.check_vocab(200); }).find("b.bin was tokenized for a vocabulary of 300"),
            std::string::npos);
}

TEST(DataLoader, ReadsLlmcFiles) {
  TempDir dir;
  std::vector<std::uint16_t> tokens(13);
  for (int i = 0; i < 13; ++i) tokens[i] = static_cast<std::uint16_t>(60000 + i);
  write_raw(dir.file("shard.bin"), {TokenFile::kLlmcMagic, 1, 13}, tokens.data(), 26);
  DataLoader loader(dir.file("shard.bin"), 3, 4, 0, 1, 0, false);
  std::vector<std::int32_t> in(12), tg(12);
  ASSERT_TRUE(loader.next_batch(in.data(), tg.data()));
  EXPECT_EQ(in[5], 60005);
  EXPECT_EQ(tg[11], 60012);
}
