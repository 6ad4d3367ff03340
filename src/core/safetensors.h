// Safetensors files (the Hugging Face weight format): reading through a read-only mmap, writing
// atomically, and sharded models (model.safetensors.index.json + model-0000i-of-0000n.safetensors).
//
// File layout: u64 little-endian header length N, N bytes of JSON header, then the data section.
// The header maps each tensor name to {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}
// (offsets relative to the data section) and may hold "__metadata__": {string: string}.
// Every field is validated on open; errors name the file and the tensor and say what to check.
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <initializer_list>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"

namespace llmq {

// Safetensors dtype strings ("F32", "BF16", "F8_E4M3", ...) <-> DType. Others (F64, U16, ...) are refused.
std::optional<DType> dtype_from_safetensors(std::string_view name);
std::string_view safetensors_dtype_name(DType dtype);

// One tensor of a file. `data` points into the file's mapping (valid while the file is open) and is
// not necessarily aligned to the element size: copy it out (read_into) rather than casting it.
struct SafeTensorInfo {
  std::string name;
  DType dtype = DType::FP32;
  std::vector<std::int64_t> shape;  // empty for a scalar
  const std::byte* data = nullptr;
  std::size_t bytes = 0;
  std::size_t file_offset = 0;  // where `data` starts in the file (for reads that bypass the mapping)
  std::string file;             // the file it lives in, for messages

  std::int64_t numel() const;
  std::string shape_string() const;  // "[896, 151936]"
  std::string describe() const;      // "tensor model.norm.weight (BF16[896]) in /x/model.safetensors"
};

// One .safetensors file, mapped read-only. Move-only; tensors are views into the mapping.
class SafeTensorsFile {
 public:
  static SafeTensorsFile open(const std::filesystem::path& path);

  SafeTensorsFile(SafeTensorsFile&& other) noexcept;
  SafeTensorsFile& operator=(SafeTensorsFile&& other) noexcept;
  SafeTensorsFile(const SafeTensorsFile&) = delete;
  SafeTensorsFile& operator=(const SafeTensorsFile&) = delete;
  ~SafeTensorsFile();

  const SafeTensorInfo* find(std::string_view name) const;  // nullptr if absent
  const SafeTensorInfo& get(std::string_view name) const;   // throws, listing a few names that exist
  const std::vector<SafeTensorInfo>& tensors() const { return tensors_; }  // in data-offset order
  std::vector<std::string> names() const;                                  // in data-offset order
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::filesystem::path& path() const { return path_; }
  std::size_t data_start() const { return data_start_; }  // byte offset of the data section in the file

 private:
  SafeTensorsFile() = default;
  void parse_header();
  void release() noexcept;

  std::filesystem::path path_;
  const std::byte* map_ = nullptr;
  std::size_t map_bytes_ = 0;
  std::size_t data_start_ = 0;
  std::vector<SafeTensorInfo> tensors_;
  std::map<std::string, std::size_t, std::less<>> by_name_;
  std::map<std::string, std::string> metadata_;
};

// All tensors of a model under one lookup by name. open() accepts a .safetensors file, a
// model.safetensors.index.json, or a directory holding one of them (model.safetensors is preferred,
// as transformers does). With an index, its weight_map (name -> shard file, relative to the index's
// folder) decides which tensors exist; tensors present in a shard but not listed are not visible.
class SafeTensorsModel {
 public:
  static SafeTensorsModel open(const std::filesystem::path& path);

  const SafeTensorInfo* find(std::string_view name) const;
  const SafeTensorInfo& get(std::string_view name) const;
  const std::vector<std::string>& names() const { return names_; }  // shard by shard, in data order
  // __metadata__ of all shards merged (the first shard wins on conflicting keys).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::vector<SafeTensorsFile>& files() const { return files_; }
  const std::filesystem::path& path() const { return path_; }  // the file or index that was opened

 private:
  struct Location {
    std::size_t file, tensor;
  };
  static SafeTensorsModel open_index(const std::filesystem::path& index_path);
  void add_visible(std::size_t file, std::size_t tensor);

  std::filesystem::path path_;
  std::vector<SafeTensorsFile> files_;
  std::map<std::string, Location, std::less<>> by_name_;
  std::vector<std::string> names_;
  std::map<std::string, std::string> metadata_;
};

// Copies a tensor into host memory at `dst` after checking it has `expected_shape`. With the same
// dtype this is a byte copy; BF16 / F16 / F32 sources also convert into an FP32 or BF16 destination
// (bf16 rounds to nearest even), so a checkpoint stored in bf16 can load into an fp32 model.
// `dst` must hold numel * dtype_size(expected) bytes.
void read_into(const SafeTensorInfo& src, void* dst, DType expected, std::span<const std::int64_t> expected_shape);
void read_into(const SafeTensorInfo& src, void* dst, DType expected, std::initializer_list<std::int64_t> expected_shape);

// Host-side scalar conversions used by read_into (exposed for tests and other host code).
float bf16_bits_to_float(std::uint16_t bits);
std::uint16_t float_to_bf16_bits(float value);  // round to nearest even; NaN stays NaN
float fp16_bits_to_float(std::uint16_t bits);

// Collects tensors and writes them as one file or as shards. add() REFERENCES host_data (no copy):
// the memory must stay valid and unchanged until write()/write_sharded() returns. Tensors are written
// in insertion order, without gaps (as the format requires). Unless set_metadata() gives a "format"
// key, "format": "pt" is added, because transformers refuses safetensors metadata without it.
class SafeTensorsWriter {
 public:
  void add(std::string name, DType dtype, std::vector<std::int64_t> shape, const void* host_data);
  void set_metadata(std::map<std::string, std::string> metadata) { metadata_ = std::move(metadata); }
  std::size_t total_bytes() const;  // sum of the tensors' data sizes

  // Writes `path` + ".tmp", syncs it and renames it to `path`, so `path` is either absent, the old
  // file, or the complete new one. The data section starts 8-byte aligned (header padded with spaces).
  void write(const std::filesystem::path& path) const;

  // Writes `dir`/model.safetensors if total_bytes() <= max_shard_bytes, else shards
  // `dir`/model-00001-of-0000n.safetensors ... (tensors in insertion order, a new shard whenever the
  // next tensor would exceed max_shard_bytes; a larger tensor gets a shard of its own) and then
  // `dir`/model.safetensors.index.json with metadata.total_size and the weight_map. The entry file of
  // the other layout (a stale index or single file from an earlier write) is removed so that it
  // cannot shadow the new one. Creates `dir` if needed; returns the entry file written.
  std::filesystem::path write_sharded(const std::filesystem::path& dir, std::size_t max_shard_bytes) const;

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<std::int64_t> shape;
    const void* data;
    std::size_t bytes;
  };
  void write_entries(const std::filesystem::path& path, std::span<const Entry> entries) const;

  std::vector<Entry> entries_;
  std::set<std::string, std::less<>> names_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace llmq
