// Token files: the on-disk form of tokenized training data, memory-mapped read-only.
//
// Native format (that of LLM.Q's tokenize_data.py, written by scripts/tokenize_data.py and by
// write_token_file below); all integers little-endian int32:
//   bytes 0..7       magic "BIN.TOK\n"
//   header[2]        version: 2 (1 is also read: it has no vocabulary size)
//   header[3]        bytes per token: 4
//   header[4]        token count N (int32, so at most 2^31 - 1 tokens per file)
//   header[5]        vocabulary size the file was tokenized for
//   header[6]        has-masks flag: 0 or 1
//   header[7..255]   padding (LLM.Q fills it with '*', we write zeros); the header is 1024 bytes
//   N int32 tokens
//   if has-masks: ceil(N / 8) bytes of loss-mask bits, bit (i % 8) of byte (i / 8) for token i
//   (numpy packbits, bitorder little). Bit 1: token i counts toward the loss as a target;
//   bit 0: token i is masked (e.g. a prompt token in fine-tuning data) and is never a target.
//
// llm.c format, also read: header[0] = 20240520, header[1] = 1 (uint16 tokens) or 2 (uint32
// tokens), header[2] = token count, 1024-byte header; no vocabulary size and no masks.
//
// Opening validates everything: existence, header, exact file size, and every token against the
// vocabulary (a vectorised max-scan over the mapping).
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace llmq {

enum class TokenFileFormat { BinTok, LlmcUint16, LlmcUint32 };

class TokenFile {
 public:
  static constexpr std::size_t kHeaderBytes = 1024;
  static constexpr std::int32_t kLlmcMagic = 20240520;

  explicit TokenFile(const std::string& path);
  ~TokenFile();
  TokenFile(TokenFile&& other) noexcept;
  TokenFile& operator=(TokenFile&& other) noexcept;
  TokenFile(const TokenFile&) = delete;
  TokenFile& operator=(const TokenFile&) = delete;

  const std::string& path() const { return path_; }
  TokenFileFormat format() const { return format_; }
  std::int64_t token_count() const { return token_count_; }
  // The vocabulary the tokens index into: the header's value, or (llm.c files, version-1 files,
  // and LLM.Q files whose header left out the special tokens) at least the largest token + 1.
  std::int32_t vocab_size() const { return vocab_size_; }
  std::int32_t max_token() const { return max_token_; }  // -1 for an empty file
  bool has_masks() const { return mask_bits_ != nullptr; }
  const std::int32_t* tokens() const { return tokens_; }
  // True when token i must not be a target (its mask bit is 0); always false without masks.
  bool is_masked(std::int64_t i) const {
    return mask_bits_ != nullptr && ((mask_bits_[i >> 3] >> (i & 7)) & 1) == 0;
  }

  // Throws when this file cannot feed a model with `model_vocab` embedding rows.
  void check_vocab(std::int32_t model_vocab) const;

 private:
  void map_file();
  void parse_header();
  void parse_bintok_header(const std::int32_t* header);
  void parse_llmc_header(const std::int32_t* header);
  void check_file_size(std::size_t token_bytes, std::size_t mask_bytes) const;
  void scan_tokens(bool header_vocab_is_strict);
  void release() noexcept;

  std::string path_;
  TokenFileFormat format_ = TokenFileFormat::BinTok;
  int fd_ = -1;
  void* map_ = nullptr;
  std::size_t map_bytes_ = 0;
  int bytes_per_token_ = 4;
  std::int64_t token_count_ = 0;
  std::int32_t header_vocab_ = 0;  // 0: the header does not state one
  std::int32_t vocab_size_ = 0;
  std::int32_t max_token_ = -1;
  bool header_has_masks_ = false;
  const std::int32_t* tokens_ = nullptr;
  const std::uint8_t* mask_bits_ = nullptr;
  std::vector<std::int32_t> widened_;  // uint16 llm.c tokens converted to int32
};

// Writes a native (BIN.TOK version 2) token file. `loss_mask`, when not empty, holds one entry per
// token: nonzero = the token counts toward the loss, 0 = masked. Throws on I/O errors.
void write_token_file(const std::string& path, std::span<const std::int32_t> tokens, std::int32_t vocab_size,
                      std::span<const std::uint8_t> loss_mask = {});

}  // namespace llmq
