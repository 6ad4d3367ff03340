// Token file reading (mmap + validation) and writing; the format is described in token_file.h.
#include "training/token_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <utility>

#include "core/errors.h"

namespace llmq {

static_assert(std::endian::native == std::endian::little, "token files are little-endian");

namespace {

constexpr char kBinTokMagic[8] = {'B', 'I', 'N', '.', 'T', 'O', 'K', '\n'};
constexpr int kHeaderInts = static_cast<int>(TokenFile::kHeaderBytes / sizeof(std::int32_t));

std::size_t mask_bytes_for(std::int64_t token_count) { return static_cast<std::size_t>((token_count + 7) / 8); }

// The first 8 bytes as readable text, for "not a token file" messages.
std::string describe_magic(const unsigned char* bytes) {
  std::string out;
  for (int i = 0; i < 8; ++i) {
    unsigned char c = bytes[i];
    if (c == '\n') {
      out += "\\n";
    } else if (c >= 32 && c < 127) {
      out += static_cast<char>(c);
    } else {
      out += fmt::format("\\x{:02x}", c);
    }
  }
  return out;
}

// Largest value when the tokens are read as unsigned: negative tokens come out above INT32_MAX.
// A branch-free max reduction, so the compiler vectorises it.
std::uint32_t max_as_unsigned(const std::int32_t* tokens, std::int64_t count) {
  std::uint32_t result = 0;
  for (std::int64_t i = 0; i < count; ++i) result = std::max(result, static_cast<std::uint32_t>(tokens[i]));
  return result;
}

std::int64_t first_at_or_above(const std::int32_t* tokens, std::int64_t count, std::uint32_t limit) {
  for (std::int64_t i = 0; i < count; ++i) {
    if (static_cast<std::uint32_t>(tokens[i]) >= limit) return i;
  }
  return -1;
}

}  // namespace

TokenFile::TokenFile(const std::string& path) : path_(path) {
  try {
    map_file();
    parse_header();
  } catch (...) {
    release();
    throw;
  }
}

TokenFile::~TokenFile() { release(); }

TokenFile::TokenFile(TokenFile&& other) noexcept { *this = std::move(other); }

TokenFile& TokenFile::operator=(TokenFile&& other) noexcept {
  if (this != &other) {
    release();
    path_ = std::move(other.path_);
    format_ = other.format_;
    fd_ = std::exchange(other.fd_, -1);
    map_ = std::exchange(other.map_, nullptr);
    map_bytes_ = std::exchange(other.map_bytes_, 0);
    bytes_per_token_ = other.bytes_per_token_;
    token_count_ = other.token_count_;
    header_vocab_ = other.header_vocab_;
    vocab_size_ = other.vocab_size_;
    max_token_ = other.max_token_;
    header_has_masks_ = other.header_has_masks_;
    tokens_ = std::exchange(other.tokens_, nullptr);
    mask_bits_ = std::exchange(other.mask_bits_, nullptr);
    widened_ = std::move(other.widened_);  // keeps its buffer, so tokens_ stays valid
  }
  return *this;
}

void TokenFile::release() noexcept {
  if (map_ != nullptr) munmap(map_, map_bytes_);
  if (fd_ >= 0) close(fd_);
  map_ = nullptr;
  fd_ = -1;
  tokens_ = nullptr;
  mask_bits_ = nullptr;
}

void TokenFile::map_file() {
  fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) {
    int err = errno;
    LLMQ_REQUIRE(err != ENOENT, "token file {} not found; create one with scripts/tokenize_data.py", path_);
    throw Error(fmt::format("token file {}: cannot open: {}", path_, std::strerror(err)));
  }
  struct stat info {};
  LLMQ_REQUIRE(fstat(fd_, &info) == 0, "token file {}: cannot stat: {}", path_, std::strerror(errno));
  LLMQ_REQUIRE(S_ISREG(info.st_mode), "token file {} is not a regular file", path_);
  map_bytes_ = static_cast<std::size_t>(info.st_size);
  LLMQ_REQUIRE(map_bytes_ >= kHeaderBytes,
               "token file {}: {} bytes on disk, shorter than the {}-byte header (empty or truncated?); "
               "re-create it with scripts/tokenize_data.py",
               path_, map_bytes_, kHeaderBytes);
  map_ = mmap(nullptr, map_bytes_, PROT_READ, MAP_PRIVATE, fd_, 0);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    throw Error(fmt::format("token file {}: mmap of {} bytes failed: {}", path_, map_bytes_, std::strerror(errno)));
  }
}

void TokenFile::parse_header() {
  const auto* bytes = static_cast<const unsigned char*>(map_);
  std::int32_t header[kHeaderInts];
  std::memcpy(header, bytes, kHeaderBytes);
  if (std::memcmp(bytes, kBinTokMagic, sizeof(kBinTokMagic)) == 0) {
    parse_bintok_header(header);
  } else if (header[0] == kLlmcMagic) {
    parse_llmc_header(header);
  } else {
    throw Error(fmt::format(
        "token file {}: not a token file: magic '{}', expected BIN.TOK (or llm.c's {}); "
        "create token files with scripts/tokenize_data.py",
        path_, describe_magic(bytes), kLlmcMagic));
  }
}

void TokenFile::parse_bintok_header(const std::int32_t* header) {
  format_ = TokenFileFormat::BinTok;
  const int version = header[2];
  LLMQ_REQUIRE(version == 1 || version == 2,
               "token file {}: unsupported BIN.TOK version {} (this build reads versions 1 and 2)", path_, version);
  bytes_per_token_ = header[3];
  LLMQ_REQUIRE(bytes_per_token_ == 4, "token file {}: unsupported bytes per token {} (BIN.TOK files hold 4)", path_,
               bytes_per_token_);
  token_count_ = header[4];
  LLMQ_REQUIRE(token_count_ >= 0, "token file {}: negative token count {} in the header (corrupt file?)", path_,
               token_count_);
  if (version == 2) {
    header_vocab_ = header[5];
    LLMQ_REQUIRE(header_vocab_ > 0, "token file {}: vocabulary size {} in the header (corrupt file?)", path_,
                 header_vocab_);
    LLMQ_REQUIRE(header[6] == 0 || header[6] == 1, "token file {}: has-masks flag {} in the header, expected 0 or 1",
                 path_, header[6]);
    header_has_masks_ = header[6] == 1;
  }
  const std::size_t mask_bytes = header_has_masks_ ? mask_bytes_for(token_count_) : 0;
  check_file_size(static_cast<std::size_t>(token_count_) * 4, mask_bytes);

  const auto* bytes = static_cast<const unsigned char*>(map_);
  tokens_ = reinterpret_cast<const std::int32_t*>(bytes + kHeaderBytes);
  if (header_has_masks_) mask_bits_ = bytes + kHeaderBytes + token_count_ * 4;
  // LLM.Q's writer pads its header with '*' and stores the HF tokenizer's `vocab_size`, which leaves
  // out added tokens such as <|endoftext|> that its files do contain: its vocabulary is a lower bound.
  const bool written_by_llmq_seed = bytes[kHeaderBytes - 2] == '*';
  scan_tokens(/*header_vocab_is_strict=*/version == 2 && !written_by_llmq_seed);
}

void TokenFile::parse_llmc_header(const std::int32_t* header) {
  const int version = header[1];
  LLMQ_REQUIRE(version == 1 || version == 2,
               "token file {}: unsupported llm.c token file version {} (1 = uint16 tokens, 2 = uint32 tokens)", path_,
               version);
  format_ = version == 1 ? TokenFileFormat::LlmcUint16 : TokenFileFormat::LlmcUint32;
  bytes_per_token_ = version == 1 ? 2 : 4;
  token_count_ = header[2];
  LLMQ_REQUIRE(token_count_ >= 0, "token file {}: negative token count {} in the header (corrupt file?)", path_,
               token_count_);
  check_file_size(static_cast<std::size_t>(token_count_) * bytes_per_token_, 0);

  const auto* payload = static_cast<const unsigned char*>(map_) + kHeaderBytes;
  if (format_ == TokenFileFormat::LlmcUint16) {
    const auto* narrow = reinterpret_cast<const std::uint16_t*>(payload);
    widened_.assign(narrow, narrow + token_count_);
    tokens_ = widened_.data();
  } else {
    tokens_ = reinterpret_cast<const std::int32_t*>(payload);
  }
  scan_tokens(/*header_vocab_is_strict=*/false);
}

void TokenFile::check_file_size(std::size_t token_bytes, std::size_t mask_bytes) const {
  const std::size_t expected = kHeaderBytes + token_bytes + mask_bytes;
  LLMQ_REQUIRE(expected == map_bytes_,
               "token file {}: {} bytes expected from header ({} tokens of {} bytes{}), {} on disk ({}); "
               "re-create it with scripts/tokenize_data.py",
               path_, expected, token_count_, bytes_per_token_, mask_bytes ? " + loss masks" : "", map_bytes_,
               map_bytes_ < expected ? "truncated?" : "extra bytes at the end: wrong token count in the header?");
}

void TokenFile::scan_tokens(bool header_vocab_is_strict) {
  madvise(map_, map_bytes_, MADV_SEQUENTIAL);
  const std::uint32_t max_unsigned = max_as_unsigned(tokens_, token_count_);
  madvise(map_, map_bytes_, MADV_NORMAL);

  const auto int_limit = static_cast<std::uint32_t>(std::numeric_limits<std::int32_t>::max()) + 1u;
  if (max_unsigned >= int_limit) {
    const std::int64_t pos = first_at_or_above(tokens_, token_count_, int_limit);
    throw Error(fmt::format("token file {}: token {} at position {} is not a valid token id (corrupt file?)", path_,
                            format_ == TokenFileFormat::LlmcUint32 ? static_cast<std::int64_t>(
                                                                         static_cast<std::uint32_t>(tokens_[pos]))
                                                                   : tokens_[pos],
                            pos));
  }
  max_token_ = token_count_ > 0 ? static_cast<std::int32_t>(max_unsigned) : -1;
  if (header_vocab_is_strict && max_token_ >= header_vocab_) {
    const std::int64_t pos = first_at_or_above(tokens_, token_count_, static_cast<std::uint32_t>(header_vocab_));
    throw Error(fmt::format(
        "token file {}: token {} at position {} is outside the vocabulary of {} stated in the header "
        "(corrupt file?); re-create it with scripts/tokenize_data.py",
        path_, tokens_[pos], pos, header_vocab_));
  }
  vocab_size_ = std::max(header_vocab_, max_token_ + 1);
}

void TokenFile::check_vocab(std::int32_t model_vocab) const {
  if (max_token_ >= model_vocab) {
    const std::int64_t pos = first_at_or_above(tokens_, token_count_, static_cast<std::uint32_t>(model_vocab));
    throw Error(fmt::format(
        "token file {}: token {} at position {} does not fit the model's vocabulary of {} (file tokenized for {}); "
        "tokenize the data with the model's tokenizer (scripts/tokenize_data.py)",
        path_, tokens_[pos], pos, model_vocab, vocab_size_));
  }
  LLMQ_REQUIRE(vocab_size_ <= model_vocab,
               "token file {} was tokenized for a vocabulary of {}, larger than the model's {}; "
               "tokenize the data with the model's tokenizer (scripts/tokenize_data.py)",
               path_, vocab_size_, model_vocab);
}

namespace {

std::vector<std::uint8_t> pack_mask_bits(std::span<const std::uint8_t> loss_mask) {
  std::vector<std::uint8_t> bits(mask_bytes_for(static_cast<std::int64_t>(loss_mask.size())), 0);
  for (std::size_t i = 0; i < loss_mask.size(); ++i) {
    if (loss_mask[i] != 0) bits[i / 8] |= static_cast<std::uint8_t>(1u << (i % 8));
  }
  return bits;
}

void write_all(std::FILE* file, const void* data, std::size_t bytes, const std::string& path) {
  if (bytes == 0) return;
  LLMQ_REQUIRE(std::fwrite(data, 1, bytes, file) == bytes, "token file {}: write failed: {}", path,
               std::strerror(errno));
}

}  // namespace

void write_token_file(const std::string& path, std::span<const std::int32_t> tokens, std::int32_t vocab_size,
                      std::span<const std::uint8_t> loss_mask) {
  LLMQ_REQUIRE(tokens.size() <= static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max()),
               "token file {}: {} tokens, a file holds at most 2^31 - 1: split the data into several files", path,
               tokens.size());
  LLMQ_REQUIRE(loss_mask.empty() || loss_mask.size() == tokens.size(),
               "token file {}: {} loss-mask entries for {} tokens", path, loss_mask.size(), tokens.size());
  LLMQ_REQUIRE(vocab_size > 0, "token file {}: vocabulary size {} must be positive", path, vocab_size);

  std::int32_t header[kHeaderInts] = {};
  std::memcpy(header, kBinTokMagic, sizeof(kBinTokMagic));
  header[2] = 2;
  header[3] = 4;
  header[4] = static_cast<std::int32_t>(tokens.size());
  header[5] = vocab_size;
  header[6] = loss_mask.empty() ? 0 : 1;
  const std::vector<std::uint8_t> mask_bits = pack_mask_bits(loss_mask);

  // Written under a temporary name and renamed, so a reader never sees a half-written file.
  const std::string temp_path = path + ".tmp";
  std::FILE* file = std::fopen(temp_path.c_str(), "wb");
  LLMQ_REQUIRE(file != nullptr, "token file {}: cannot create: {}", temp_path, std::strerror(errno));
  try {
    write_all(file, header, sizeof(header), temp_path);
    write_all(file, tokens.data(), tokens.size_bytes(), temp_path);
    write_all(file, mask_bits.data(), mask_bits.size(), temp_path);
  } catch (...) {
    std::fclose(file);
    std::remove(temp_path.c_str());
    throw;
  }
  const bool closed = std::fclose(file) == 0;
  if (!closed) std::remove(temp_path.c_str());
  LLMQ_REQUIRE(closed, "token file {}: write failed: {}", temp_path, std::strerror(errno));
  LLMQ_REQUIRE(std::rename(temp_path.c_str(), path.c_str()) == 0, "token file {}: cannot rename {} to it: {}", path,
               temp_path, std::strerror(errno));
}

}  // namespace llmq
