// Safetensors reading (mmap + header validation), sharded models and converting reads.
// Writing is in safetensors_writer.cpp.
#include "core/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <utility>

#include "core/errors.h"

namespace llmq {

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian; big-endian hosts are not supported");

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

struct SafetensorsName {
  std::string_view name;
  DType dtype;
};
constexpr std::array<SafetensorsName, 10> kSafetensorsNames{{
    {"F32", DType::FP32}, {"BF16", DType::BF16}, {"F16", DType::FP16}, {"F8_E4M3", DType::E4M3},
    {"F8_E5M2", DType::E5M2}, {"I32", DType::INT32}, {"I64", DType::INT64}, {"I8", DType::INT8},
    {"U8", DType::UINT8}, {"BOOL", DType::BOOL},
}};

std::string shape_to_string(std::span<const std::int64_t> shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// "a, b, c, ... (N in all)": a hint listing some names that do exist.
std::string some_names(const std::vector<std::string>& names) {
  constexpr std::size_t kShown = 5;
  std::string s;
  for (std::size_t i = 0; i < std::min(names.size(), kShown); ++i) s += (i ? ", " : "") + names[i];
  if (names.size() > kShown) s += fmt::format(", ... ({} in all)", names.size());
  return names.empty() ? "it holds no tensors" : "it holds " + s;
}

// A JSON integer >= 0, or nullopt (negative, fractional, not a number).
std::optional<std::uint64_t> json_unsigned(const json& value) {
  if (value.is_number_unsigned()) return value.get<std::uint64_t>();
  if (value.is_number_integer() && value.get<std::int64_t>() >= 0) return value.get<std::int64_t>();
  return std::nullopt;
}

// A tensor entry of a header, before offsets are turned into pointers.
struct ParsedEntry {
  SafeTensorInfo info;
  std::uint64_t begin = 0, end = 0;
};

std::vector<std::int64_t> parse_shape(const json& shape, const std::string& where, std::uint64_t& numel) {
  LLMQ_REQUIRE(shape.is_array(), "{}: \"shape\" must be an array of integers, found {}", where, shape.dump());
  std::vector<std::int64_t> dims;
  numel = 1;
  for (const json& d : shape) {
    LLMQ_REQUIRE(d.is_number_integer(), "{}: shape {} holds a non-integer dimension", where, shape.dump());
    LLMQ_REQUIRE(!d.is_number_unsigned() || d.get<std::uint64_t>() <= std::uint64_t(std::numeric_limits<std::int64_t>::max()),
                 "{}: shape {} has a dimension too large for int64", where, shape.dump());
    const std::int64_t dim = d.get<std::int64_t>();
    LLMQ_REQUIRE(dim >= 0, "{}: shape {} has a negative dimension", where, shape.dump());
    LLMQ_REQUIRE(!__builtin_mul_overflow(numel, std::uint64_t(dim), &numel),
                 "{}: shape {} has more elements than fit in 64 bits", where, shape.dump());
    dims.push_back(dim);
  }
  return dims;
}

ParsedEntry parse_entry(const std::string& file, const std::string& name, const json& entry, std::uint64_t data_bytes) {
  const std::string where = fmt::format("safetensors file {}, tensor {}", file, name);
  LLMQ_REQUIRE(entry.is_object(), "{}: header entry must be an object with dtype, shape and data_offsets, found {}", where,
               entry.dump());
  for (const char* field : {"dtype", "shape", "data_offsets"})
    LLMQ_REQUIRE(entry.contains(field), "{}: header entry has no \"{}\" field (corrupt header?)", where, field);

  ParsedEntry parsed;
  SafeTensorInfo& info = parsed.info;
  info.name = name;
  info.file = file;
  const json& dtype = entry["dtype"];
  LLMQ_REQUIRE(dtype.is_string(), "{}: \"dtype\" must be a string, found {}", where, dtype.dump());
  const auto type = dtype_from_safetensors(dtype.get<std::string>());
  LLMQ_REQUIRE(type.has_value(),
               "{}: dtype {} is not supported (supported: F32, BF16, F16, F8_E4M3, F8_E5M2, I32, I64, I8, U8, BOOL); "
               "convert the checkpoint, e.g. to bf16, first",
               where, dtype.dump());
  info.dtype = *type;

  std::uint64_t numel = 0;
  info.shape = parse_shape(entry["shape"], where, numel);
  std::uint64_t expected_bytes = 0;
  LLMQ_REQUIRE(!__builtin_mul_overflow(numel, std::uint64_t(dtype_size(info.dtype)), &expected_bytes),
               "{}: shape {} is too large in bytes", where, info.shape_string());

  const json& offsets = entry["data_offsets"];
  LLMQ_REQUIRE(offsets.is_array() && offsets.size() == 2,
               "{}: \"data_offsets\" must be [begin, end], found {}", where, offsets.dump());
  const auto begin = json_unsigned(offsets[0]), end = json_unsigned(offsets[1]);
  LLMQ_REQUIRE(begin && end && *begin <= *end, "{}: data_offsets {} must be two integers with 0 <= begin <= end", where,
               offsets.dump());
  LLMQ_REQUIRE(*end - *begin == expected_bytes,
               "{}: data_offsets {} span {} bytes, but {}{} needs {} bytes (corrupt header?)", where, offsets.dump(),
               *end - *begin, safetensors_dtype_name(info.dtype), info.shape_string(), expected_bytes);
  LLMQ_REQUIRE(*end <= data_bytes,
               "{}: data ends at byte {} of the data section, but the file holds only {} data bytes (truncated?)", where,
               *end, data_bytes);
  parsed.begin = *begin;
  parsed.end = *end;
  info.bytes = expected_bytes;
  return parsed;
}

std::map<std::string, std::string> parse_metadata(const std::string& file, const json& metadata) {
  LLMQ_REQUIRE(metadata.is_object(), "safetensors file {}: __metadata__ must be an object of strings, found {}", file,
               metadata.dump());
  std::map<std::string, std::string> result;
  for (const auto& [key, value] : metadata.items()) {
    LLMQ_REQUIRE(value.is_string(), "safetensors file {}: __metadata__ value of \"{}\" must be a string, found {}", file,
                 key, value.dump());
    result[key] = value.get<std::string>();
  }
  return result;
}

// Tensors sorted by offset must not share bytes (empty tensors take no bytes and cannot overlap).
void check_no_overlap(const std::string& file, std::vector<ParsedEntry>& entries) {
  std::sort(entries.begin(), entries.end(), [](const ParsedEntry& a, const ParsedEntry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  const ParsedEntry* furthest = nullptr;  // the non-empty tensor reaching furthest so far
  for (const ParsedEntry& e : entries) {
    if (e.begin == e.end) continue;
    LLMQ_REQUIRE(!furthest || e.begin >= furthest->end,
                 "safetensors file {}: tensors {} (bytes {}..{}) and {} (bytes {}..{}) overlap (corrupt header?)", file,
                 furthest ? furthest->info.name : "", furthest ? furthest->begin : 0, furthest ? furthest->end : 0,
                 e.info.name, e.begin, e.end);
    if (!furthest || e.end > furthest->end) furthest = &e;
  }
}

std::string errno_text() { return std::strerror(errno); }

}  // namespace

// ---------------------------------------------------------------------------------------------------
// dtype names and tensor info

std::optional<DType> dtype_from_safetensors(std::string_view name) {
  for (const auto& n : kSafetensorsNames)
    if (n.name == name) return n.dtype;
  return std::nullopt;
}

std::string_view safetensors_dtype_name(DType dtype) {
  for (const auto& n : kSafetensorsNames)
    if (n.dtype == dtype) return n.name;
  throw Error(fmt::format("dtype {} has no safetensors name", dtype_name(dtype)));
}

std::int64_t SafeTensorInfo::numel() const {
  std::int64_t n = 1;
  for (std::int64_t d : shape) n *= d;
  return n;
}

std::string SafeTensorInfo::shape_string() const { return shape_to_string(shape); }

std::string SafeTensorInfo::describe() const {
  return fmt::format("tensor {} ({}{}) in {}", name, safetensors_dtype_name(dtype), shape_string(), file);
}

// ---------------------------------------------------------------------------------------------------
// SafeTensorsFile

SafeTensorsFile SafeTensorsFile::open(const fs::path& path) {
  SafeTensorsFile f;
  f.path_ = path;
  const std::string file = path.string();
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    LLMQ_REQUIRE(errno != ENOENT, "safetensors file {} not found (check the path or the model download)", file);
    throw Error(fmt::format("safetensors file {}: cannot open ({})", file, errno_text()));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(fmt::format("safetensors file {}: not a regular file", file));
  }
  const auto size = static_cast<std::size_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    throw Error(fmt::format("safetensors file {}: {} bytes, shorter than the 8-byte header length (empty or truncated file?)",
                            file, size));
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_errno = errno;
  ::close(fd);  // the mapping stays valid without the descriptor
  LLMQ_REQUIRE(map != MAP_FAILED, "safetensors file {}: mmap of {} bytes failed ({})", file, size, std::strerror(map_errno));
  f.map_ = static_cast<const std::byte*>(map);
  f.map_bytes_ = size;
  f.parse_header();  // on a throw, f's destructor unmaps
  return f;
}

void SafeTensorsFile::parse_header() {
  const std::string file = path_.string();
  std::uint64_t header_bytes = 0;
  std::memcpy(&header_bytes, map_, sizeof(header_bytes));
  LLMQ_REQUIRE(header_bytes <= map_bytes_ - 8,
               "safetensors file {}: header length {} bytes, but only {} bytes follow (truncated, or not a safetensors file?)",
               file, header_bytes, map_bytes_ - 8);
  data_start_ = 8 + header_bytes;

  const char* text = reinterpret_cast<const char*>(map_ + 8);
  json header;
  try {
    header = json::parse(text, text + header_bytes);
  } catch (const json::exception& e) {
    throw Error(fmt::format("safetensors file {}: header is not valid JSON ({}); the file is corrupt or not safetensors", file,
                            e.what()));
  }
  LLMQ_REQUIRE(header.is_object(), "safetensors file {}: header must be a JSON object, found a {}", file, header.type_name());

  const std::uint64_t data_bytes = map_bytes_ - data_start_;
  std::vector<ParsedEntry> entries;
  for (const auto& [key, value] : header.items()) {
    if (key == "__metadata__")
      metadata_ = parse_metadata(file, value);
    else
      entries.push_back(parse_entry(file, key, value, data_bytes));
  }
  check_no_overlap(file, entries);

  tensors_.reserve(entries.size());
  for (ParsedEntry& e : entries) {
    e.info.file_offset = data_start_ + e.begin;
    e.info.data = map_ + e.info.file_offset;
    by_name_.emplace(e.info.name, tensors_.size());
    tensors_.push_back(std::move(e.info));
  }
}

SafeTensorsFile::SafeTensorsFile(SafeTensorsFile&& other) noexcept { *this = std::move(other); }

SafeTensorsFile& SafeTensorsFile::operator=(SafeTensorsFile&& other) noexcept {
  if (this == &other) return *this;
  release();
  path_ = std::move(other.path_);
  map_ = std::exchange(other.map_, nullptr);
  map_bytes_ = std::exchange(other.map_bytes_, 0);
  data_start_ = other.data_start_;
  tensors_ = std::move(other.tensors_);  // the infos' data pointers stay valid: the mapping did not move
  by_name_ = std::move(other.by_name_);
  metadata_ = std::move(other.metadata_);
  return *this;
}

SafeTensorsFile::~SafeTensorsFile() { release(); }

void SafeTensorsFile::release() noexcept {
  if (map_) ::munmap(const_cast<std::byte*>(map_), map_bytes_);
  map_ = nullptr;
  map_bytes_ = 0;
}

const SafeTensorInfo* SafeTensorsFile::find(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

const SafeTensorInfo& SafeTensorsFile::get(std::string_view name) const {
  const SafeTensorInfo* info = find(name);
  LLMQ_REQUIRE(info, "tensor {} not found in safetensors file {}; {}", name, path_.string(), some_names(names()));
  return *info;
}

std::vector<std::string> SafeTensorsFile::names() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& t : tensors_) names.push_back(t.name);
  return names;
}

// ---------------------------------------------------------------------------------------------------
// SafeTensorsModel

SafeTensorsModel SafeTensorsModel::open(const fs::path& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    if (fs::exists(path / "model.safetensors", ec)) return open(path / "model.safetensors");
    if (fs::exists(path / "model.safetensors.index.json", ec)) return open_index(path / "model.safetensors.index.json");
    throw Error(fmt::format("model folder {} holds neither model.safetensors nor model.safetensors.index.json", path.string()));
  }
  LLMQ_REQUIRE(fs::exists(path, ec), "safetensors model {} not found (expected a .safetensors file, an index.json or a folder)",
               path.string());
  const std::string filename = path.filename().string();
  if (filename.ends_with(".index.json")) return open_index(path);

  SafeTensorsModel model;
  model.path_ = path;
  model.files_.push_back(SafeTensorsFile::open(path));
  for (std::size_t t = 0; t < model.files_[0].tensors().size(); ++t) model.add_visible(0, t);
  model.metadata_ = model.files_[0].metadata();
  return model;
}

SafeTensorsModel SafeTensorsModel::open_index(const fs::path& index_path) {
  const std::string index_file = index_path.string();
  std::ifstream in(index_path, std::ios::binary);
  LLMQ_REQUIRE(in, "safetensors index {} not found or not readable", index_file);
  json index;
  try {
    index = json::parse(in);
  } catch (const json::exception& e) {
    throw Error(fmt::format("safetensors index {} is not valid JSON ({})", index_file, e.what()));
  }
  LLMQ_REQUIRE(index.is_object() && index.contains("weight_map") && index["weight_map"].is_object(),
               "safetensors index {} has no \"weight_map\" object (tensor name -> shard file)", index_file);

  std::map<std::string, std::vector<std::string>> names_by_shard;
  for (const auto& [name, shard] : index["weight_map"].items()) {
    LLMQ_REQUIRE(shard.is_string(), "safetensors index {}: weight_map entry of tensor {} must be a file name, found {}",
                 index_file, name, shard.dump());
    names_by_shard[shard.get<std::string>()].push_back(name);
  }

  SafeTensorsModel model;
  model.path_ = index_path;
  const fs::path folder = index_path.parent_path();
  std::vector<const std::vector<std::string>*> listed;  // per opened shard: the names the index maps to it
  for (const auto& [shard, names] : names_by_shard) {
    const fs::path shard_path = folder / shard;
    std::error_code ec;
    LLMQ_REQUIRE(fs::exists(shard_path, ec),
                 "safetensors index {} maps tensor {} (and {} more) to shard {}, which was not found (incomplete download?)",
                 index_file, names.front(), names.size() - 1, shard_path.string());
    SafeTensorsFile file = SafeTensorsFile::open(shard_path);
    for (const std::string& name : names)
      LLMQ_REQUIRE(file.find(name), "safetensors index {} maps tensor {} to shard {}, but that shard has no such tensor; {} "
                   "(index and shards from different versions?)", index_file, name, shard_path.string(), some_names(file.names()));
    for (const auto& [key, value] : file.metadata()) model.metadata_.emplace(key, value);
    model.files_.push_back(std::move(file));
    listed.push_back(&names);
  }

  // Only the tensors the index lists are visible, shard by shard in data order.
  for (std::size_t f = 0; f < model.files_.size(); ++f) {
    const std::set<std::string_view> visible(listed[f]->begin(), listed[f]->end());
    const auto& tensors = model.files_[f].tensors();
    for (std::size_t t = 0; t < tensors.size(); ++t)
      if (visible.contains(tensors[t].name)) model.add_visible(f, t);
  }
  return model;
}

void SafeTensorsModel::add_visible(std::size_t file, std::size_t tensor) {
  const std::string& name = files_[file].tensors()[tensor].name;
  by_name_.emplace(name, Location{file, tensor});
  names_.push_back(name);
}

const SafeTensorInfo* SafeTensorsModel::find(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &files_[it->second.file].tensors()[it->second.tensor];
}

const SafeTensorInfo& SafeTensorsModel::get(std::string_view name) const {
  const SafeTensorInfo* info = find(name);
  LLMQ_REQUIRE(info, "tensor {} not found in safetensors model {}; {}", name, path_.string(), some_names(names_));
  return *info;
}

// ---------------------------------------------------------------------------------------------------
// Conversions and read_into

float bf16_bits_to_float(std::uint16_t bits) { return std::bit_cast<float>(std::uint32_t(bits) << 16); }

std::uint16_t float_to_bf16_bits(float value) {
  std::uint32_t u = std::bit_cast<std::uint32_t>(value);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return std::uint16_t((u >> 16) | 0x0040u);  // NaN: keep it a (quiet) NaN
  u += 0x7FFFu + ((u >> 16) & 1u);  // round to nearest, ties to the even upper half
  return std::uint16_t(u >> 16);
}

float fp16_bits_to_float(std::uint16_t bits) {
  const std::uint32_t sign = std::uint32_t(bits & 0x8000u) << 16;
  const std::uint32_t exponent = (bits >> 10) & 0x1Fu;
  const std::uint32_t mantissa = bits & 0x3FFu;
  if (exponent == 0x1F) return std::bit_cast<float>(sign | 0x7F800000u | (mantissa << 13));  // inf / NaN
  if (exponent != 0) return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
  const float subnormal = static_cast<float>(mantissa) * 0x1p-24f;  // exact: at most 10 significant bits
  return std::bit_cast<float>(sign | std::bit_cast<std::uint32_t>(subnormal));
}

namespace {

template <typename Bits>
Bits load_bits(const std::byte* base, std::size_t i) {
  Bits bits;
  std::memcpy(&bits, base + i * sizeof(Bits), sizeof(Bits));  // the mapping gives no alignment guarantee
  return bits;
}

float load_as_float(DType type, const std::byte* base, std::size_t i) {
  switch (type) {
    case DType::FP32: return std::bit_cast<float>(load_bits<std::uint32_t>(base, i));
    case DType::BF16: return bf16_bits_to_float(load_bits<std::uint16_t>(base, i));
    case DType::FP16: return fp16_bits_to_float(load_bits<std::uint16_t>(base, i));
    default: throw Error("load_as_float: unsupported dtype");
  }
}

bool convertible(DType from, DType to) {
  const bool float_source = from == DType::FP32 || from == DType::BF16 || from == DType::FP16;
  return float_source && (to == DType::FP32 || to == DType::BF16);
}

template <typename Load>
void convert_all(Load load, std::size_t n, DType to, void* dst) {
  auto* out = static_cast<std::byte*>(dst);
  if (to == DType::FP32) {
    for (std::size_t i = 0; i < n; ++i) {
      const float v = load(i);
      std::memcpy(out + 4 * i, &v, 4);
    }
  } else {
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint16_t v = float_to_bf16_bits(load(i));
      std::memcpy(out + 2 * i, &v, 2);
    }
  }
}

}  // namespace

void read_into(const SafeTensorInfo& src, void* dst, DType expected, std::span<const std::int64_t> expected_shape) {
  LLMQ_REQUIRE(std::equal(src.shape.begin(), src.shape.end(), expected_shape.begin(), expected_shape.end()),
               "{}: shape on file {}, expected {} (checkpoint of a different model configuration?)", src.describe(),
               src.shape_string(), shape_to_string(expected_shape));
  if (src.dtype == expected) {
    if (src.bytes) std::memcpy(dst, src.data, src.bytes);
    return;
  }
  LLMQ_REQUIRE(convertible(src.dtype, expected),
               "{}: dtype on file {}, expected {}; only BF16/F16/F32 tensors convert, and only into fp32 or bf16",
               src.describe(), safetensors_dtype_name(src.dtype), dtype_name(expected));
  const std::size_t n = static_cast<std::size_t>(src.numel());
  const std::byte* base = src.data;
  switch (src.dtype) {  // one loop per source type keeps the per-element switch out of the hot loop
    case DType::FP32: convert_all([&](std::size_t i) { return load_as_float(DType::FP32, base, i); }, n, expected, dst); break;
    case DType::BF16: convert_all([&](std::size_t i) { return load_as_float(DType::BF16, base, i); }, n, expected, dst); break;
    default: convert_all([&](std::size_t i) { return load_as_float(DType::FP16, base, i); }, n, expected, dst); break;
  }
}

void read_into(const SafeTensorInfo& src, void* dst, DType expected, std::initializer_list<std::int64_t> expected_shape) {
  read_into(src, dst, expected, std::span<const std::int64_t>(expected_shape.begin(), expected_shape.size()));
}

}  // namespace llmq
