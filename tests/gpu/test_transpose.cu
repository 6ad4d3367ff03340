// Byte transpose (src/kernels/transpose.cu) against a CPU loop of its head comment,
// out[c * rows + r] = in[r * cols + c]. Inputs are random bytes (all 256 values occur) and the
// comparison is exact: bytes are only moved, so there is no tolerance. Every case runs twice, with
// the output poisoned to 0xFF and then to 0x00, so a byte the kernel fails to write is caught
// whatever its expected value; bytes before and after the output (guards) must keep the poison.
// Sizes cover both paths: multiples of 16 with aligned pointers (16-byte path, whole and partial
// 128-byte tiles) and ragged sizes or misaligned pointers (bytewise path).
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gpu_test_utils.h"
#include "kernels/transpose.h"

namespace llmq::test {
namespace {

using Bytes = std::vector<std::uint8_t>;
constexpr std::size_t kGuard = 256;  // bytes allocated after the output that must stay untouched

Bytes random_bytes(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  Bytes v(n);
  for (std::size_t i = 0; i < n; i += 8) {
    const std::uint64_t bits = rng();
    for (std::size_t k = 0; k < 8 && i + k < n; ++k) v[i + k] = static_cast<std::uint8_t>(bits >> (8 * k));
  }
  return v;
}

// out[c * rows + r] = in[r * cols + c], read from in + in_offset.
Bytes reference_transpose(const Bytes& in, std::size_t in_offset, std::int64_t rows, std::int64_t cols) {
  Bytes out(static_cast<std::size_t>(rows * cols));
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) out[c * rows + r] = in[in_offset + r * cols + c];
  return out;
}

// Compares got[offset .. offset + want.size()) with want and checks that every other byte of got
// (the guards) still holds `poison`.
void expect_output(const Bytes& got, std::size_t offset, const Bytes& want, std::uint8_t poison) {
  std::size_t wrong = 0, first_wrong = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    if (got[offset + i] != want[i] && wrong++ == 0) first_wrong = i;
  }
  EXPECT_EQ(wrong, 0u) << "first wrong byte at out index " << first_wrong << ": got "
                       << int(got[offset + first_wrong]) << ", expected " << int(want[first_wrong]);
  std::size_t guard_changed = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const bool inside = i >= offset && i < offset + want.size();
    if (!inside && got[i] != poison) ++guard_changed;
  }
  EXPECT_EQ(guard_changed, 0u) << "bytes written outside the output";
}

// Transposes a random [rows, cols] matrix read from in + in_offset into out + out_offset and
// compares with the CPU loop, once per poison value.
void check_transpose(std::int64_t rows, std::int64_t cols, std::size_t in_offset = 0, std::size_t out_offset = 0) {
  SCOPED_TRACE("rows=" + std::to_string(rows) + " cols=" + std::to_string(cols) + " in_offset=" +
               std::to_string(in_offset) + " out_offset=" + std::to_string(out_offset));
  const std::size_t n = static_cast<std::size_t>(rows * cols);
  const Bytes host_in = random_bytes(in_offset + n, static_cast<std::uint64_t>(rows) * 1000003u + cols);
  const Bytes want = reference_transpose(host_in, in_offset, rows, cols);
  DeviceBuffer<std::uint8_t> in(host_in);
  DeviceBuffer<std::uint8_t> out(out_offset + n + kGuard);
  for (const std::uint8_t poison : {std::uint8_t{0xFF}, std::uint8_t{0x00}}) {
    if (poison == 0xFF)
      out.poison();
    else
      LLMQ_CUDA_CHECK(cudaMemset(out.get(), poison, out.size()));
    kernels::transpose_bytes(out.get() + out_offset, in.get() + in_offset, rows, cols, nullptr);
    sync_and_check();
    expect_output(out.download(), out_offset, want, poison);
  }
}

struct Shape {
  std::int64_t rows, cols;
};

TEST(TransposeBytes, RaggedSizesTakeBytewisePath) {
  for (const Shape s : {Shape{1, 1}, Shape{3, 5}, Shape{17, 33}, Shape{33, 17}, Shape{130, 70}, Shape{1000, 37},
                        Shape{129, 129}, Shape{255, 257}, Shape{16, 33}, Shape{33, 16}})
    check_transpose(s.rows, s.cols);
}

TEST(TransposeBytes, MultiplesOf16TakeVectorPath) {
  // Whole 128-byte tiles, and partial edge tiles (sizes multiples of 16 but not of 128).
  for (const Shape s : {Shape{16, 16}, Shape{128, 128}, Shape{256, 384}, Shape{144, 272}, Shape{272, 144},
                        Shape{896, 1152}, Shape{48, 2064}, Shape{2064, 48}})
    check_transpose(s.rows, s.cols);
}

TEST(TransposeBytes, TallAndSkinny) {
  for (const Shape s : {Shape{5000, 16}, Shape{16, 5000}, Shape{20000, 48}, Shape{4099, 3}, Shape{3, 4099}})
    check_transpose(s.rows, s.cols);
}

TEST(TransposeBytes, SingleRowOrColumn) {
  for (const Shape s : {Shape{1, 4097}, Shape{4097, 1}, Shape{1, 16}, Shape{16, 1}, Shape{1, 100000}})
    check_transpose(s.rows, s.cols);
}

TEST(TransposeBytes, MisalignedPointersTakeBytewisePath) {
  check_transpose(128, 128, /*in_offset=*/1, /*out_offset=*/0);
  check_transpose(128, 128, /*in_offset=*/0, /*out_offset=*/3);
  check_transpose(64, 48, /*in_offset=*/8, /*out_offset=*/8);  // 8-byte aligned is not enough
}

TEST(TransposeBytes, LargeModelShape) { check_transpose(3584, 4608); }

// More column tiles than gridDim.y may hold (65535): the kernels loop over the rest.
TEST(TransposeBytes, ColumnTilesBeyondGridLimit) {
  check_transpose(16, 65535 * 128 + 16);  // 16-byte path, 128-byte tiles: 65536 column tiles
  check_transpose(3, 65535 * 32 + 33);    // bytewise path, 32-byte tiles: 65537 column tiles
}

// Times the fused gate/up weight of Qwen2.5-7B ([2 * 18944, 3584]) on both paths and prints GB/s
// (bytes read + written per second); asserts only correctness, never speed.
TEST(TransposeBytes, Bandwidth37888x3584) {
  constexpr std::int64_t rows = 37888, cols = 3584;
  const std::size_t n = static_cast<std::size_t>(rows * cols);
  Bytes host_in = random_bytes(n + 1, 37888);  // the bytewise run reads from byte 1 on
  const Bytes want = reference_transpose(host_in, 1, rows, cols);
  host_in.erase(host_in.begin());  // the 16-byte run reads the same matrix from an aligned buffer
  DeviceBuffer<std::uint8_t> aligned_in(host_in);
  host_in.insert(host_in.begin(), std::uint8_t{0x5A});
  DeviceBuffer<std::uint8_t> shifted_in(host_in);
  DeviceBuffer<std::uint8_t> out(n + kGuard);
  for (const bool aligned : {true, false}) {
    SCOPED_TRACE(aligned ? "aligned input" : "input at byte offset 1");
    const std::uint8_t* in = aligned ? aligned_in.get() : shifted_in.get() + 1;
    out.poison();
    const double ms = mean_ms([&] { kernels::transpose_bytes(out.get(), in, rows, cols, nullptr); });
    report_bandwidth(aligned ? "transpose_bytes 37888x3584 (16-byte path)"
                             : "transpose_bytes 37888x3584 (bytewise path, input at byte offset 1)",
                     2.0 * static_cast<double>(n), ms);
    expect_output(out.download(), 0, want, 0xFF);
  }
}

// ---- bad input ----------------------------------------------------------------------------------

TEST(TransposeBytes, RejectsNonPositiveSizes) {
  DeviceBuffer<std::uint8_t> in(64), out(64);
  for (const Shape s : {Shape{0, 8}, Shape{8, 0}, Shape{-1, 8}, Shape{8, -4}, Shape{0, 0}})
    expect_error([&] { kernels::transpose_bytes(out.get(), in.get(), s.rows, s.cols, nullptr); },
                 "both sizes must be at least 1");
}

TEST(TransposeBytes, RejectsOverflowingSize) {
  DeviceBuffer<std::uint8_t> in(64), out(64);
  expect_error(
      [&] { kernels::transpose_bytes(out.get(), in.get(), std::numeric_limits<std::int64_t>::max() / 2, 3, nullptr); },
      "overflows");
}

TEST(TransposeBytes, RejectsNullPointers) {
  DeviceBuffer<std::uint8_t> buffer(64);
  expect_error([&] { kernels::transpose_bytes(nullptr, buffer.get(), 8, 8, nullptr); }, "null pointer");
  expect_error([&] { kernels::transpose_bytes(buffer.get(), nullptr, 8, 8, nullptr); }, "null pointer");
}

TEST(TransposeBytes, RejectsInPlaceAndOverlap) {
  DeviceBuffer<std::uint8_t> buffer(128);
  expect_error([&] { kernels::transpose_bytes(buffer.get(), buffer.get(), 8, 8, nullptr); }, "overlap");
  expect_error([&] { kernels::transpose_bytes(buffer.get() + 32, buffer.get(), 8, 8, nullptr); }, "overlap");
  expect_error([&] { kernels::transpose_bytes(buffer.get(), buffer.get() + 63, 8, 8, nullptr); }, "overlap");
  // Adjacent halves of one buffer do not overlap.
  EXPECT_NO_THROW(kernels::transpose_bytes(buffer.get() + 64, buffer.get(), 8, 8, nullptr));
  sync_and_check();
}

}  // namespace
}  // namespace llmq::test
