// Safetensors writing: one file written atomically (temporary file, fsync, rename), or shards with
// a model.safetensors.index.json. Reading is in safetensors.cpp.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <utility>

#include <fmt/format.h>

#include "core/errors.h"
#include "core/safetensors.h"

namespace llmq {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {
std::string errno_text() { return std::strerror(errno); }
}  // namespace
// ---------------------------------------------------------------------------------------------------
// SafeTensorsWriter

namespace {

// Creates `path`.tmp, lets `fill` write into it, syncs and renames it over `path`.
// On any failure the temporary file is removed and `path` is left untouched.
class AtomicFile {
 public:
  explicit AtomicFile(fs::path path) : path_(std::move(path)), tmp_(path_.string() + ".tmp") {
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    LLMQ_REQUIRE(fd_ >= 0, "cannot create {} ({}); does the folder exist and is it writable?", tmp_, errno_text());
  }
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile() {
    if (fd_ >= 0) {
      ::close(fd_);
      ::unlink(tmp_.c_str());
    }
  }

  void write(const void* data, std::size_t bytes) {
    const auto* p = static_cast<const char*>(data);
    while (bytes > 0) {
      const ssize_t n = ::write(fd_, p, std::min<std::size_t>(bytes, std::size_t(1) << 30));
      if (n < 0 && errno == EINTR) continue;
      LLMQ_REQUIRE(n > 0, "writing {} failed ({}); is the disk full?", tmp_, errno_text());
      p += n;
      bytes -= static_cast<std::size_t>(n);
    }
  }

  void commit() {
    LLMQ_REQUIRE(::fsync(fd_) == 0, "writing {} failed at fsync ({}); is the disk full?", tmp_, errno_text());
    const int rc = ::close(fd_);
    fd_ = -1;
    if (rc != 0 || ::rename(tmp_.c_str(), path_.c_str()) != 0) {
      const std::string why = errno_text();
      ::unlink(tmp_.c_str());
      throw Error(fmt::format("cannot move {} to {} ({})", tmp_, path_.string(), why));
    }
  }

 private:
  fs::path path_;
  std::string tmp_;
  int fd_ = -1;
};

std::string header_text(const nlohmann::ordered_json& header) {
  try {
    return header.dump();
  } catch (const json::exception& e) {
    throw Error(fmt::format("safetensors header cannot be written ({}); tensor names and metadata must be UTF-8", e.what()));
  }
}

}  // namespace

void SafeTensorsWriter::add(std::string name, DType dtype, std::vector<std::int64_t> shape, const void* host_data) {
  LLMQ_REQUIRE(!name.empty() && name != "__metadata__", "safetensors writer: invalid tensor name \"{}\"", name);
  LLMQ_REQUIRE(!names_.contains(name), "safetensors writer: tensor {} added twice", name);
  safetensors_dtype_name(dtype);  // throws for a dtype the format cannot store
  std::uint64_t bytes = dtype_size(dtype);
  for (std::int64_t d : shape) {
    LLMQ_REQUIRE(d >= 0, "safetensors writer: tensor {} has negative dimension in shape {}", name, fmt::format("[{}]", fmt::join(shape, ", ")));
    LLMQ_REQUIRE(!__builtin_mul_overflow(bytes, std::uint64_t(d), &bytes), "safetensors writer: tensor {} is too large", name);
  }
  LLMQ_REQUIRE(host_data || bytes == 0, "safetensors writer: tensor {} has no data pointer", name);
  names_.insert(name);
  entries_.push_back(Entry{std::move(name), dtype, std::move(shape), host_data, static_cast<std::size_t>(bytes)});
}

std::size_t SafeTensorsWriter::total_bytes() const {
  std::size_t total = 0;
  for (const Entry& e : entries_) total += e.bytes;
  return total;
}

void SafeTensorsWriter::write(const fs::path& path) const { write_entries(path, entries_); }

void SafeTensorsWriter::write_entries(const fs::path& path, std::span<const Entry> entries) const {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  nlohmann::ordered_json metadata(metadata_);
  if (!metadata.contains("format")) metadata["format"] = "pt";
  header["__metadata__"] = metadata;
  std::uint64_t offset = 0;
  for (const Entry& e : entries) {
    header[e.name] = {{"dtype", safetensors_dtype_name(e.dtype)},
                      {"shape", e.shape},
                      {"data_offsets", {offset, offset + e.bytes}}};
    offset += e.bytes;
  }
  std::string text = header_text(header);
  text.append((8 - text.size() % 8) % 8, ' ');  // 8 + header length is then a multiple of 8: aligned data start

  AtomicFile out(path);
  const std::uint64_t header_bytes = text.size();
  out.write(&header_bytes, sizeof(header_bytes));
  out.write(text.data(), text.size());
  for (const Entry& e : entries) out.write(e.data, e.bytes);
  out.commit();
}

fs::path SafeTensorsWriter::write_sharded(const fs::path& dir, std::size_t max_shard_bytes) const {
  LLMQ_REQUIRE(max_shard_bytes > 0, "safetensors writer: max shard size must be positive");
  std::error_code ec;
  fs::create_directories(dir, ec);
  LLMQ_REQUIRE(!ec, "cannot create folder {} ({})", dir.string(), ec.message());
  const fs::path single = dir / "model.safetensors", index = dir / "model.safetensors.index.json";

  const std::size_t total = total_bytes();
  if (total <= max_shard_bytes) {
    write(single);
    fs::remove(index, ec);
    return single;
  }

  // Greedy packing in insertion order: [first entry, end entry) of each shard.
  std::vector<std::pair<std::size_t, std::size_t>> shards;
  std::size_t shard_bytes = 0;
  for (std::size_t i = 0; i < entries_.size(); ++i) {
    if (shards.empty() || (shard_bytes > 0 && shard_bytes + entries_[i].bytes > max_shard_bytes)) {
      shards.push_back({i, i});
      shard_bytes = 0;
    }
    shards.back().second = i + 1;
    shard_bytes += entries_[i].bytes;
  }

  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  for (std::size_t s = 0; s < shards.size(); ++s) {
    const std::string shard_name = fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, shards.size());
    const auto [first, end] = shards[s];
    write_entries(dir / shard_name, std::span(entries_).subspan(first, end - first));
    for (std::size_t i = first; i < end; ++i) weight_map[entries_[i].name] = shard_name;
  }

  // A stale model.safetensors would win over the index when loading: remove it before the index exists,
  // so that an interrupted write leaves no entry file rather than silently the old weights.
  fs::remove(single, ec);
  nlohmann::ordered_json index_json = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  const std::string text = index_json.dump(2) + "\n";
  AtomicFile out(index);
  out.write(text.data(), text.size());
  out.commit();
  return index;
}

}  // namespace llmq
