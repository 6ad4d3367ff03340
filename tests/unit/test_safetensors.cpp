// Safetensors reader / writer: bit-exact round trips, metadata, alignment, sharding, converting reads,
// and one test per kind of corrupt input, each checking that the error names the file or tensor.
#include <gtest/gtest.h>
#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <random>

#include "core/errors.h"
#include "core/safetensors.h"

using namespace llmq;
namespace fs = std::filesystem;

namespace {

// A fresh folder under the system temp folder per test, removed afterwards.
class SafeTensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / fmt::format("llmq_st_{}_{}", ::getpid(), info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  fs::path path(const std::string& name) const { return dir_ / name; }

  // Writes a file byte for byte.
  fs::path write_bytes(const std::string& name, const std::string& bytes) const {
    std::ofstream(path(name), std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return path(name);
  }

  // A safetensors file from a header text and a data section, as another writer would produce it.
  fs::path write_raw(const std::string& name, const std::string& header, const std::string& data) const {
    const std::uint64_t n = header.size();
    std::string bytes(reinterpret_cast<const char*>(&n), 8);
    return write_bytes(name, bytes + header + data);
  }

  fs::path dir_;
};

// Expects `fn` to throw llmq::Error whose message contains every one of `parts`.
template <typename Fn>
void expect_error(Fn&& fn, std::initializer_list<std::string> parts) {
  try {
    fn();
    ADD_FAILURE() << "no llmq::Error thrown";
  } catch (const Error& e) {
    const std::string message = e.what();
    for (const auto& part : parts) EXPECT_NE(message.find(part), std::string::npos) << "'" << part << "' not in: " << message;
  }
}

template <typename T>
std::vector<T> random_values(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<T> v(n);
  for (auto& x : v) {
    std::uint64_t bits = (std::uint64_t(rng()) << 32) | rng();
    std::memcpy(&x, &bits, sizeof(T));  // arbitrary bit patterns: the round trip must be bit-exact
  }
  return v;
}

std::vector<std::byte> bytes_of(const SafeTensorInfo& t) { return {t.data, t.data + t.bytes}; }

template <typename T>
std::vector<std::byte> bytes_of(const std::vector<T>& v) {
  const auto* p = reinterpret_cast<const std::byte*>(v.data());
  return {p, p + v.size() * sizeof(T)};
}

}  // namespace

TEST(SafeTensorsDType, NamesMapBothWays) {
  EXPECT_EQ(dtype_from_safetensors("BF16"), DType::BF16);
  EXPECT_EQ(dtype_from_safetensors("F8_E4M3"), DType::E4M3);
  EXPECT_EQ(dtype_from_safetensors("BOOL"), DType::BOOL);
  EXPECT_FALSE(dtype_from_safetensors("F64").has_value());
  EXPECT_FALSE(dtype_from_safetensors("bf16").has_value());  // the format's names are upper case
  for (DType t : {DType::FP32, DType::BF16, DType::FP16, DType::E4M3, DType::E5M2, DType::INT32, DType::INT64, DType::INT8,
                  DType::UINT8, DType::BOOL})
    EXPECT_EQ(dtype_from_safetensors(safetensors_dtype_name(t)), t);
}

TEST_F(SafeTensorsTest, RoundTripIsBitExactForSeveralDtypesAndShapes) {
  auto f32 = random_values<std::uint32_t>(3 * 5, 1);
  auto bf16 = random_values<std::uint16_t>(7, 2);
  auto f16 = random_values<std::uint16_t>(2 * 3 * 4, 3);
  auto i64 = random_values<std::int64_t>(4, 4);
  auto u8 = random_values<std::uint8_t>(3, 5);  // odd byte count: later tensors start unaligned
  auto e4m3 = random_values<std::uint8_t>(5, 6);
  auto i32 = random_values<std::int32_t>(1, 7);
  std::vector<std::uint8_t> flags{1, 0, 1};

  SafeTensorsWriter writer;
  writer.add("w.f32", DType::FP32, {3, 5}, f32.data());
  writer.add("w.bf16", DType::BF16, {7}, bf16.data());
  writer.add("w.u8", DType::UINT8, {3}, u8.data());
  writer.add("w.f16", DType::FP16, {2, 3, 4}, f16.data());
  writer.add("w.i64", DType::INT64, {4}, i64.data());
  writer.add("w.e4m3", DType::E4M3, {5, 1}, e4m3.data());
  writer.add("w.scalar", DType::INT32, {}, i32.data());
  writer.add("w.empty", DType::FP32, {0, 4}, nullptr);
  writer.add("w.bool", DType::BOOL, {3}, flags.data());
  writer.write(path("model.safetensors"));

  const auto file = SafeTensorsFile::open(path("model.safetensors"));
  const std::vector<std::string> order{"w.f32", "w.bf16", "w.u8", "w.f16", "w.i64", "w.e4m3", "w.scalar", "w.empty", "w.bool"};
  EXPECT_EQ(file.names(), order);  // insertion order is data order

  const auto& t = file.get("w.f16");
  EXPECT_EQ(t.dtype, DType::FP16);
  EXPECT_EQ(t.shape, (std::vector<std::int64_t>{2, 3, 4}));
  EXPECT_EQ(bytes_of(t), bytes_of(f16));
  EXPECT_EQ(bytes_of(file.get("w.f32")), bytes_of(f32));
  EXPECT_EQ(bytes_of(file.get("w.bf16")), bytes_of(bf16));
  EXPECT_EQ(bytes_of(file.get("w.u8")), bytes_of(u8));
  EXPECT_EQ(bytes_of(file.get("w.i64")), bytes_of(i64));
  EXPECT_EQ(file.get("w.e4m3").dtype, DType::E4M3);
  EXPECT_EQ(bytes_of(file.get("w.e4m3")), bytes_of(e4m3));
  EXPECT_TRUE(file.get("w.scalar").shape.empty());
  EXPECT_EQ(file.get("w.scalar").numel(), 1);
  EXPECT_EQ(bytes_of(file.get("w.scalar")), bytes_of(i32));
  EXPECT_EQ(file.get("w.empty").bytes, 0u);
  EXPECT_EQ(file.get("w.bool").dtype, DType::BOOL);
  EXPECT_EQ(bytes_of(file.get("w.bool")), bytes_of(flags));

  // read_into with the stored dtype copies the same bits.
  std::vector<std::int64_t> i64_out(4, -1);
  read_into(file.get("w.i64"), i64_out.data(), DType::INT64, {4});
  EXPECT_EQ(i64_out, i64);
  EXPECT_EQ(file.find("w.missing"), nullptr);
}

TEST_F(SafeTensorsTest, ReadsAFileWrittenByAnotherWriter) {
  // Unpadded header, keys in alphabetical order, data in a different order than the keys.
  const float a[2] = {1.5f, -2.0f};
  const std::uint16_t b[1] = {0x3F80};
  std::string data(reinterpret_cast<const char*>(b), 2);
  data += std::string(reinterpret_cast<const char*>(a), 8);
  write_raw("other.safetensors",
            R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[2,10]},"b":{"dtype":"BF16","shape":[1,1],"data_offsets":[0,2]}})",
            data);
  const auto file = SafeTensorsFile::open(path("other.safetensors"));
  EXPECT_EQ(file.names(), (std::vector<std::string>{"b", "a"}));
  EXPECT_EQ(file.get("a").file_offset, file.data_start() + 2);
  EXPECT_TRUE(file.metadata().empty());
  float out[2] = {};
  read_into(file.get("a"), out, DType::FP32, {2});
  EXPECT_EQ(out[0], 1.5f);
  EXPECT_EQ(out[1], -2.0f);
}

TEST_F(SafeTensorsTest, MetadataRoundTripsAndFormatPtIsAdded) {
  const float x = 1.0f;
  SafeTensorsWriter writer;
  writer.add("x", DType::FP32, {1}, &x);
  writer.set_metadata({{"step", "1200"}, {"note", "quotes \" and unicode \xc3\xa9"}});
  writer.write(path("m.safetensors"));
  const auto file = SafeTensorsFile::open(path("m.safetensors"));
  const std::map<std::string, std::string> expected{
      {"step", "1200"}, {"note", "quotes \" and unicode \xc3\xa9"}, {"format", "pt"}};
  EXPECT_EQ(file.metadata(), expected);

  writer.set_metadata({{"format", "mlx"}});  // an explicit format is kept
  writer.write(path("m.safetensors"));
  EXPECT_EQ(SafeTensorsFile::open(path("m.safetensors")).metadata().at("format"), "mlx");
}

TEST_F(SafeTensorsTest, DataStartIsEightByteAlignedForAnyHeaderLength) {
  const std::uint8_t byte = 7;
  for (int name_length = 1; name_length <= 9; ++name_length) {
    SafeTensorsWriter writer;
    writer.add(std::string(name_length, 'n'), DType::UINT8, {1}, &byte);
    writer.write(path("a.safetensors"));

    std::ifstream in(path("a.safetensors"), std::ios::binary);
    std::uint64_t header_bytes = 0;
    in.read(reinterpret_cast<char*>(&header_bytes), 8);
    EXPECT_EQ(header_bytes % 8, 0u) << "name length " << name_length;
    std::string header(header_bytes, '\0');
    in.read(header.data(), static_cast<std::streamsize>(header_bytes));
    EXPECT_EQ(header.find_first_not_of(' ', header.rfind('}') + 1), std::string::npos);  // padded with spaces only
    EXPECT_TRUE(nlohmann::json::parse(header).is_object());

    const auto file = SafeTensorsFile::open(path("a.safetensors"));
    EXPECT_EQ(file.data_start() % 8, 0u);
    EXPECT_EQ(file.data_start(), 8 + header_bytes);
    EXPECT_EQ(std::to_integer<int>(*file.tensors()[0].data), 7);
  }
}

TEST_F(SafeTensorsTest, WriteIsAtomicAndReplacesTheOldFile) {
  const float one = 1.0f, two = 2.0f;
  SafeTensorsWriter first, second;
  first.add("old", DType::FP32, {1}, &one);
  second.add("new", DType::FP32, {1}, &two);
  first.write(path("w.safetensors"));
  second.write(path("w.safetensors"));
  EXPECT_FALSE(fs::exists(path("w.safetensors.tmp")));
  const auto file = SafeTensorsFile::open(path("w.safetensors"));
  EXPECT_EQ(file.names(), std::vector<std::string>{"new"});

  // A folder that does not exist: the error names the file, nothing is left behind.
  expect_error([&] { second.write(path("no_such_dir/x.safetensors")); }, {"no_such_dir/x.safetensors.tmp"});
}

TEST_F(SafeTensorsTest, WriterRejectsBadTensors) {
  const float x = 0;
  SafeTensorsWriter writer;
  writer.add("x", DType::FP32, {1}, &x);
  expect_error([&] { writer.add("x", DType::FP32, {1}, &x); }, {"x", "twice"});
  expect_error([&] { writer.add("neg", DType::FP32, {2, -1}, &x); }, {"neg", "negative"});
  expect_error([&] { writer.add("__metadata__", DType::FP32, {1}, &x); }, {"__metadata__"});
  expect_error([&] { writer.add("null", DType::FP32, {3}, nullptr); }, {"null"});
}

TEST_F(SafeTensorsTest, ShardedRoundTripThroughIndex) {
  // Five tensors of 40 bytes, shards of at most 100 bytes: 2 + 2 + 1.
  std::vector<std::vector<std::uint32_t>> values;
  SafeTensorsWriter writer;
  for (int i = 0; i < 5; ++i) values.push_back(random_values<std::uint32_t>(10, 100 + i));
  for (int i = 0; i < 5; ++i) writer.add(fmt::format("layer.{}.w", i), DType::FP32, {2, 5}, values[i].data());
  writer.set_metadata({{"run", "test"}});
  EXPECT_EQ(writer.total_bytes(), 200u);

  const fs::path model_dir = path("model");
  const fs::path entry = writer.write_sharded(model_dir, 100);
  EXPECT_EQ(entry, model_dir / "model.safetensors.index.json");
  for (const char* shard : {"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                            "model-00003-of-00003.safetensors"})
    EXPECT_TRUE(fs::exists(model_dir / shard)) << shard;
  EXPECT_FALSE(fs::exists(model_dir / "model-00001-of-00004.safetensors"));

  std::ifstream in(entry);
  const auto index = nlohmann::json::parse(in);
  EXPECT_EQ(index["metadata"]["total_size"].get<std::uint64_t>(), 200u);
  EXPECT_EQ(index["weight_map"]["layer.4.w"], "model-00003-of-00003.safetensors");
  EXPECT_EQ(index["weight_map"]["layer.1.w"], "model-00001-of-00003.safetensors");

  for (const fs::path& open_path : {model_dir, entry}) {
    const auto model = SafeTensorsModel::open(open_path);
    EXPECT_EQ(model.files().size(), 3u);
    EXPECT_EQ(model.names(), (std::vector<std::string>{"layer.0.w", "layer.1.w", "layer.2.w", "layer.3.w", "layer.4.w"}));
    EXPECT_EQ(model.metadata().at("run"), "test");
    for (int i = 0; i < 5; ++i) {
      std::vector<std::uint32_t> out(10, 0xDEADBEEF);
      read_into(model.get(fmt::format("layer.{}.w", i)), out.data(), DType::FP32, {2, 5});
      EXPECT_EQ(out, values[i]) << "layer " << i;
    }
  }

  // Small enough for one file: model.safetensors, and the stale index is removed so it cannot shadow it.
  EXPECT_EQ(writer.write_sharded(model_dir, 1000), model_dir / "model.safetensors");
  EXPECT_FALSE(fs::exists(model_dir / "model.safetensors.index.json"));
  const auto single = SafeTensorsModel::open(model_dir);
  EXPECT_EQ(single.files().size(), 1u);
  EXPECT_EQ(bytes_of(single.get("layer.3.w")), bytes_of(values[3]));

  // And back to shards: the stale model.safetensors is removed, or it would shadow the index.
  writer.write_sharded(model_dir, 100);
  EXPECT_FALSE(fs::exists(model_dir / "model.safetensors"));
  EXPECT_EQ(SafeTensorsModel::open(model_dir).files().size(), 3u);
}

TEST_F(SafeTensorsTest, TensorLargerThanShardSizeGetsItsOwnShard) {
  auto big = random_values<std::uint16_t>(64, 9);
  auto small = random_values<std::uint16_t>(4, 10);
  SafeTensorsWriter writer;
  writer.add("small.a", DType::BF16, {4}, small.data());
  writer.add("big", DType::BF16, {8, 8}, big.data());
  writer.add("small.b", DType::BF16, {4}, small.data());
  writer.write_sharded(path("m"), 16);
  const auto model = SafeTensorsModel::open(path("m"));
  EXPECT_EQ(model.files().size(), 3u);
  EXPECT_EQ(bytes_of(model.get("big")), bytes_of(big));
  EXPECT_EQ(bytes_of(model.get("small.b")), bytes_of(small));
}

TEST_F(SafeTensorsTest, GetListsAvailableNames) {
  const float x = 0;
  SafeTensorsWriter writer;
  writer.add("model.embed_tokens.weight", DType::FP32, {1}, &x);
  writer.add("model.norm.weight", DType::FP32, {1}, &x);
  writer.write(path("model.safetensors"));
  const auto file = SafeTensorsFile::open(path("model.safetensors"));
  expect_error([&] { file.get("lm_head.weight"); },
               {"lm_head.weight", "model.safetensors", "model.embed_tokens.weight", "model.norm.weight"});
  const auto model = SafeTensorsModel::open(dir_);
  expect_error([&] { model.get("lm_head.weight"); }, {"lm_head.weight", "model.norm.weight"});
}

// ---------------------------------------------------------------------------------------------------
// Corrupt or missing inputs

TEST_F(SafeTensorsTest, MissingFileAndFolderAreReported) {
  expect_error([&] { SafeTensorsFile::open(path("absent.safetensors")); }, {"absent.safetensors", "not found"});
  expect_error([&] { SafeTensorsModel::open(path("absent.safetensors")); }, {"absent.safetensors", "not found"});
  expect_error([&] { SafeTensorsModel::open(dir_); }, {dir_.string(), "model.safetensors.index.json"});
}

TEST_F(SafeTensorsTest, EmptyFileIsRejected) {
  write_bytes("empty.safetensors", "");
  expect_error([&] { SafeTensorsFile::open(path("empty.safetensors")); }, {"empty.safetensors", "0 bytes"});
}

TEST_F(SafeTensorsTest, TruncatedHeaderLengthIsRejected) {
  write_bytes("short.safetensors", std::string("\x10\x00\x00\x00\x00", 5));
  expect_error([&] { SafeTensorsFile::open(path("short.safetensors")); }, {"short.safetensors", "8-byte header length"});
}

TEST_F(SafeTensorsTest, HeaderLengthBeyondEndOfFileIsRejected) {
  const std::uint64_t n = 1000;
  write_bytes("long.safetensors", std::string(reinterpret_cast<const char*>(&n), 8) + "{}");
  expect_error([&] { SafeTensorsFile::open(path("long.safetensors")); }, {"long.safetensors", "header length 1000", "truncated"});
  const std::uint64_t huge = ~std::uint64_t(0);
  write_bytes("huge.safetensors", std::string(reinterpret_cast<const char*>(&huge), 8) + "{}");
  expect_error([&] { SafeTensorsFile::open(path("huge.safetensors")); }, {"huge.safetensors", "header length"});
}

TEST_F(SafeTensorsTest, GarbageOrNonObjectJsonIsRejected) {
  write_raw("garbage.safetensors", "{\"a\": [1, 2", "");
  expect_error([&] { SafeTensorsFile::open(path("garbage.safetensors")); }, {"garbage.safetensors", "not valid JSON"});
  write_raw("array.safetensors", "[1, 2]", "");
  expect_error([&] { SafeTensorsFile::open(path("array.safetensors")); }, {"array.safetensors", "JSON object"});
}

TEST_F(SafeTensorsTest, MissingOrWronglyTypedFieldsAreRejected) {
  write_raw("nodtype.safetensors", R"({"w":{"shape":[1],"data_offsets":[0,4]}})", "abcd");
  expect_error([&] { SafeTensorsFile::open(path("nodtype.safetensors")); }, {"nodtype.safetensors", "tensor w", "\"dtype\""});
  write_raw("noshape.safetensors", R"({"w":{"dtype":"F32","data_offsets":[0,4]}})", "abcd");
  expect_error([&] { SafeTensorsFile::open(path("noshape.safetensors")); }, {"tensor w", "\"shape\""});
  write_raw("strshape.safetensors", R"({"w":{"dtype":"F32","shape":"1","data_offsets":[0,4]}})", "abcd");
  expect_error([&] { SafeTensorsFile::open(path("strshape.safetensors")); }, {"strshape.safetensors", "tensor w", "shape"});
  write_raw("offsets3.safetensors", R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}})", "abcd");
  expect_error([&] { SafeTensorsFile::open(path("offsets3.safetensors")); }, {"tensor w", "data_offsets"});
  write_raw("floatdim.safetensors", R"({"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", "abcd");
  expect_error([&] { SafeTensorsFile::open(path("floatdim.safetensors")); }, {"tensor w", "non-integer"});
  write_raw("meta.safetensors", R"({"__metadata__":{"step":12},"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", "a");
  expect_error([&] { SafeTensorsFile::open(path("meta.safetensors")); }, {"meta.safetensors", "__metadata__", "step"});
}

TEST_F(SafeTensorsTest, UnknownDtypeIsRejected) {
  write_raw("f64.safetensors", R"({"w.f64":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})", "abcdefgh");
  expect_error([&] { SafeTensorsFile::open(path("f64.safetensors")); }, {"f64.safetensors", "w.f64", "F64", "not supported"});
}

TEST_F(SafeTensorsTest, NegativeOrOverflowingShapeIsRejected) {
  write_raw("neg.safetensors", R"({"w":{"dtype":"F32","shape":[-1,4],"data_offsets":[0,4]}})", "abcd");
  expect_error([&] { SafeTensorsFile::open(path("neg.safetensors")); }, {"neg.safetensors", "tensor w", "negative"});
  write_raw("big.safetensors",
            R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,4]}})", "abcd");
  expect_error([&] { SafeTensorsFile::open(path("big.safetensors")); }, {"big.safetensors", "tensor w", "64 bits"});
}

TEST_F(SafeTensorsTest, OffsetsNotMatchingShapeAreRejected) {
  write_raw("mismatch.safetensors", R"({"w.q":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,8]}})", "abcdefgh");
  expect_error([&] { SafeTensorsFile::open(path("mismatch.safetensors")); },
               {"mismatch.safetensors", "w.q", "8 bytes", "12 bytes"});
  write_raw("reversed.safetensors", R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}})", "abcd");
  expect_error([&] { SafeTensorsFile::open(path("reversed.safetensors")); }, {"reversed.safetensors", "begin <= end"});
}

TEST_F(SafeTensorsTest, DataBeyondEndOfFileIsReportedAsTruncated) {
  std::vector<float> values(16, 1.0f);
  SafeTensorsWriter writer;
  writer.add("a", DType::FP32, {4}, values.data());
  writer.add("b", DType::FP32, {12}, values.data());
  writer.write(path("full.safetensors"));
  const auto size = fs::file_size(path("full.safetensors"));
  fs::copy_file(path("full.safetensors"), path("cut.safetensors"));
  fs::resize_file(path("cut.safetensors"), size - 5);
  expect_error([&] { SafeTensorsFile::open(path("cut.safetensors")); }, {"cut.safetensors", "tensor b", "truncated?"});
}

TEST_F(SafeTensorsTest, OverlappingTensorsAreRejected) {
  write_raw("overlap.safetensors",
            R"({"first":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
            R"("second":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
            std::string(12, 'x'));
  expect_error([&] { SafeTensorsFile::open(path("overlap.safetensors")); }, {"overlap.safetensors", "first", "second", "overlap"});
  // Empty tensors take no bytes and may sit anywhere inside the data section.
  write_raw("empty_ok.safetensors",
            R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})",
            std::string(8, 'x'));
  EXPECT_EQ(SafeTensorsFile::open(path("empty_ok.safetensors")).tensors().size(), 2u);
}

TEST_F(SafeTensorsTest, EveryTruncationOfAValidFileFailsCleanly) {
  auto values = random_values<std::uint16_t>(30, 11);
  SafeTensorsWriter writer;
  writer.add("x", DType::BF16, {5, 6}, values.data());
  writer.write(path("ok.safetensors"));
  const auto size = fs::file_size(path("ok.safetensors"));
  for (std::uintmax_t keep = 0; keep < size; ++keep) {
    fs::copy_file(path("ok.safetensors"), path("cut.safetensors"), fs::copy_options::overwrite_existing);
    fs::resize_file(path("cut.safetensors"), keep);
    expect_error([&] { SafeTensorsFile::open(path("cut.safetensors")); }, {"cut.safetensors"});
  }
}

TEST_F(SafeTensorsTest, RandomHeaderCorruptionIsRejectedOrStaysInBounds) {
  auto values = random_values<std::uint32_t>(12, 12);
  SafeTensorsWriter writer;
  writer.add("a", DType::FP32, {3, 2}, values.data());
  writer.add("b", DType::INT32, {6}, values.data() + 6);
  writer.write(path("ok.safetensors"));
  std::ifstream in(path("ok.safetensors"), std::ios::binary);
  const std::string original((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::size_t header_end = 8 + original.size() - 48;  // 48 data bytes at the end

  std::mt19937 rng(13);
  int rejected = 0;
  for (int trial = 0; trial < 300; ++trial) {
    std::string bytes = original;
    for (int flips = 0; flips < 3; ++flips) bytes[rng() % header_end] = static_cast<char>(rng() % 256);
    write_bytes("fuzz.safetensors", bytes);
    try {
      const auto file = SafeTensorsFile::open(path("fuzz.safetensors"));
      for (const auto& t : file.tensors()) {  // whatever was accepted must lie in the data section
        EXPECT_GE(t.file_offset, file.data_start());
        EXPECT_LE(t.file_offset + t.bytes, bytes.size());
        EXPECT_EQ(std::memcmp(t.data, bytes.data() + t.file_offset, t.bytes), 0);
      }
    } catch (const Error& e) {
      ++rejected;
      EXPECT_NE(std::string(e.what()).find("fuzz.safetensors"), std::string::npos) << e.what();
    }
  }
  EXPECT_GT(rejected, 0);
}

TEST_F(SafeTensorsTest, IndexPointingToMissingShardIsRejected) {
  const float x = 1;
  SafeTensorsWriter writer;
  writer.add("a", DType::FP32, {1}, &x);
  writer.add("b", DType::FP32, {1}, &x);
  const fs::path index = writer.write_sharded(path("m"), 4);
  fs::remove(path("m") / "model-00002-of-00002.safetensors");
  expect_error([&] { SafeTensorsModel::open(index); },
               {"model.safetensors.index.json", "model-00002-of-00002.safetensors", "tensor b", "not found"});
}

TEST_F(SafeTensorsTest, IndexNamingTensorAbsentFromItsShardIsRejected) {
  const float x = 1;
  SafeTensorsWriter writer;
  writer.add("present", DType::FP32, {1}, &x);
  writer.write(path("shard.safetensors"));
  std::ofstream(path("model.safetensors.index.json"))
      << R"({"metadata":{"total_size":8},"weight_map":{"present":"shard.safetensors","ghost":"shard.safetensors"}})";
  expect_error([&] { SafeTensorsModel::open(dir_); }, {"model.safetensors.index.json", "ghost", "shard.safetensors", "present"});

  std::ofstream(path("model.safetensors.index.json")) << R"({"metadata":{}})";
  expect_error([&] { SafeTensorsModel::open(dir_); }, {"model.safetensors.index.json", "weight_map"});
}

TEST_F(SafeTensorsTest, ReadIntoChecksShapeAndDtype) {
  std::vector<std::int32_t> ids{1, 2, 3, 4, 5, 6};
  SafeTensorsWriter writer;
  writer.add("ids", DType::INT32, {2, 3}, ids.data());
  writer.write(path("r.safetensors"));
  const auto file = SafeTensorsFile::open(path("r.safetensors"));
  std::vector<float> out(6);
  expect_error([&] { read_into(file.get("ids"), out.data(), DType::INT32, {3, 2}); },
               {"ids", "r.safetensors", "[2, 3]", "[3, 2]"});
  expect_error([&] { read_into(file.get("ids"), out.data(), DType::INT32, {6}); }, {"ids", "[2, 3]", "[6]"});
  expect_error([&] { read_into(file.get("ids"), out.data(), DType::FP32, {2, 3}); }, {"ids", "r.safetensors", "I32", "fp32"});
}

TEST(SafeTensorsConvert, Bf16RoundsToNearestEven) {
  EXPECT_EQ(float_to_bf16_bits(1.0f), 0x3F80);
  EXPECT_EQ(float_to_bf16_bits(-2.5f), 0xC020);
  EXPECT_EQ(float_to_bf16_bits(3.14159f), 0x4049);  // 0x40490FD0: lower half below the midpoint
  EXPECT_EQ(bf16_bits_to_float(0x4049), 3.140625f);
  EXPECT_EQ(float_to_bf16_bits(std::bit_cast<float>(0x3F80C000u)), 0x3F81);  // above the midpoint: up
  EXPECT_EQ(float_to_bf16_bits(std::bit_cast<float>(0x3F808000u)), 0x3F80);  // tie, even below: down
  EXPECT_EQ(float_to_bf16_bits(std::bit_cast<float>(0x3F818000u)), 0x3F82);  // tie, odd below: up to even
  EXPECT_EQ(float_to_bf16_bits(std::bit_cast<float>(0x7F7FFFFFu)), 0x7F80);  // max float rounds to inf
  EXPECT_TRUE(std::isnan(bf16_bits_to_float(float_to_bf16_bits(std::bit_cast<float>(0x7F800001u)))));
  EXPECT_EQ(bf16_bits_to_float(0xC020), -2.5f);
}

TEST(SafeTensorsConvert, Fp16DecodesNormalsSubnormalsAndSpecials) {
  EXPECT_EQ(fp16_bits_to_float(0x3C00), 1.0f);
  EXPECT_EQ(fp16_bits_to_float(0xC100), -2.5f);
  EXPECT_EQ(fp16_bits_to_float(0x7BFF), 65504.0f);
  EXPECT_EQ(fp16_bits_to_float(0x0001), 0x1p-24f);
  EXPECT_EQ(fp16_bits_to_float(0x03FF), 1023 * 0x1p-24f);
  EXPECT_EQ(fp16_bits_to_float(0x8000), -0.0f);
  EXPECT_TRUE(std::signbit(fp16_bits_to_float(0x8000)));
  EXPECT_EQ(fp16_bits_to_float(0xFC00), -INFINITY);
  EXPECT_TRUE(std::isnan(fp16_bits_to_float(0x7E00)));
}

TEST_F(SafeTensorsTest, ConvertingReadsBetweenFp32Bf16AndFp16) {
  const std::vector<float> f32{1.0f, -2.5f, 3.14159f, 0.0f};
  const std::vector<std::uint16_t> bf16{0x3F80, 0xC020, 0x4049, 0x8000};
  const std::vector<std::uint16_t> f16{0x3C00, 0xC100, 0x4248, 0x0001};  // 1, -2.5, 3.140625, 2^-24
  SafeTensorsWriter writer;
  writer.add("f32", DType::FP32, {2, 2}, f32.data());
  writer.add("bf16", DType::BF16, {2, 2}, bf16.data());
  writer.add("f16", DType::FP16, {2, 2}, f16.data());
  writer.write(path("c.safetensors"));
  const auto file = SafeTensorsFile::open(path("c.safetensors"));

  std::vector<std::uint16_t> as_bf16(4, 0xFFFF);
  read_into(file.get("f32"), as_bf16.data(), DType::BF16, {2, 2});
  EXPECT_EQ(as_bf16, (std::vector<std::uint16_t>{0x3F80, 0xC020, 0x4049, 0x0000}));

  std::vector<float> as_f32(4, NAN);
  read_into(file.get("bf16"), as_f32.data(), DType::FP32, {2, 2});
  EXPECT_EQ(as_f32, (std::vector<float>{1.0f, -2.5f, 3.140625f, -0.0f}));

  read_into(file.get("f16"), as_f32.data(), DType::FP32, {2, 2});
  EXPECT_EQ(as_f32, (std::vector<float>{1.0f, -2.5f, 3.140625f, 0x1p-24f}));

  read_into(file.get("f16"), as_bf16.data(), DType::BF16, {2, 2});
  EXPECT_EQ(as_bf16, (std::vector<std::uint16_t>{0x3F80, 0xC020, 0x4049, 0x3380}));  // 2^-24 = 0x33800000
}
