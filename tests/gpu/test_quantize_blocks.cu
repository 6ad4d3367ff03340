// FP8 block-scaled quantization (src/kernels/quantize_blocks.cu) against a CPU loop over its
// blocks: per block the abs-max and quantize.cu's scale in fp32, then every byte and every
// scale_inv bit-exact against cuda_fp8.h's host conversions. Ragged edge blocks, rows not a multiple
// of 16, columns not a multiple of 8 and a misaligned input cover the element-wise paths; outputs and
// scale arrays are poisoned first, so a byte or scale not written, or written outside its layout,
// shows. Inputs span six decades, so blocks get very different scales. Exactness is the criterion.
#include <cuda_fp8.h>
#include <fmt/format.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "fp8_reference.h"
#include "gpu_test_utils.h"
#include "kernels/quantize_blocks.h"

namespace llmq::test {
namespace {

using kernels::Fp8Blocks;
using kernels::ScaleLayout;
constexpr int kBlock = 128;
const Fp8Blocks kBlockShapes[] = {Fp8Blocks::Row128, Fp8Blocks::Square128};

int blocks_of(int n) { return (n + kBlock - 1) / kBlock; }

struct BlockCase {
  int rows, cols;
  bool want_q, want_t;
  int x_offset;         // elements: a misaligned start takes the element-wise loads
  bool blocks_inner;    // scale layout: block index contiguous (else row/column index contiguous)
};

std::string describe(const BlockCase& c, DType t, Fp8Blocks b) {
  return fmt::format("{} {} x {} ({}{}, x offset {}, {})", b == Fp8Blocks::Row128 ? "1x128" : "128x128", c.rows,
                     c.cols, c.want_q ? "q" : "", c.want_t ? " q_t" : "", c.x_offset,
                     dtype_name(t));
}

// The scale layouts of a case: q's index pairs are (row or block row, block column) of x; q_t's
// (column or block column, block row).
struct Layouts {
  ScaleLayout q, t;
  std::size_t q_count, t_count;
};

Layouts layouts_for(const BlockCase& c, Fp8Blocks b) {
  const int qi = b == Fp8Blocks::Row128 ? c.rows : blocks_of(c.rows), qj = blocks_of(c.cols);
  const int ti = b == Fp8Blocks::Row128 ? c.cols : blocks_of(c.cols), tj = blocks_of(c.rows);
  const auto layout = [&](int i, int j) { return c.blocks_inner ? ScaleLayout{j, 1} : ScaleLayout{1, i}; };
  return {layout(qi, qj), layout(ti, tj), static_cast<std::size_t>(qi) * qj, static_cast<std::size_t>(ti) * tj};
}

std::size_t at(ScaleLayout l, std::int64_t i, std::int64_t j) { return static_cast<std::size_t>(i * l.i_stride + j * l.j_stride); }

struct Quantized {
  std::vector<fp8_byte> q, q_t;
  std::vector<float> q_scale_inv, q_t_scale_inv;
};

// The CPU version of quantize_blocks_fp8: every block scaled by its own abs-max. Scale slots that
// no block owns keep the poison (all ones: NaN), as on the device.
Quantized reference_blocks(const std::vector<float>& x, const BlockCase& c, DType t, Fp8Blocks b, const Layouts& l) {
  float poison;  // DeviceBuffer::poison's float: all bits set
  std::memset(&poison, 0xFF, sizeof(poison));
  const std::size_t n = static_cast<std::size_t>(c.rows) * c.cols;
  Quantized out{std::vector<fp8_byte>(n, kPoison), std::vector<fp8_byte>(n, kPoison),
                std::vector<float>(l.q_count, poison), std::vector<float>(l.t_count, poison)};
  // Quantizes the elements of one block (listed as (row, column) of x) with the block's own scale.
  const auto quantize_block = [&](const std::vector<std::pair<int, int>>& cells, std::size_t q_slot, std::size_t t_slot,
                                  bool to_q, bool to_t) {
    std::vector<float> values;
    for (const auto& [r, col] : cells) values.push_back(x[static_cast<std::size_t>(r) * c.cols + col]);
    const float scale = reference_scale(cpu_abs_max(values), t);
    const std::vector<fp8_byte> bytes = reference_quantize(values, scale, t);
    for (std::size_t k = 0; k < cells.size(); ++k) {
      const auto [r, col] = cells[k];
      if (to_q) out.q[static_cast<std::size_t>(r) * c.cols + col] = bytes[k];
      if (to_t) out.q_t[static_cast<std::size_t>(col) * c.rows + r] = bytes[k];
    }
    if (to_q) out.q_scale_inv[q_slot] = 1.f / scale;
    if (to_t) out.q_t_scale_inv[t_slot] = 1.f / scale;
  };
  for (int rb = 0; rb < blocks_of(c.rows); ++rb)
    for (int cb = 0; cb < blocks_of(c.cols); ++cb) {
      const int r_end = std::min(c.rows, (rb + 1) * kBlock), c_end = std::min(c.cols, (cb + 1) * kBlock);
      if (b == Fp8Blocks::Square128) {
        std::vector<std::pair<int, int>> cells;
        for (int r = rb * kBlock; r < r_end; ++r)
          for (int col = cb * kBlock; col < c_end; ++col) cells.emplace_back(r, col);
        quantize_block(cells, at(l.q, rb, cb), at(l.t, cb, rb), c.want_q, c.want_t);
        continue;
      }
      for (int r = rb * kBlock; c.want_q && r < r_end; ++r) {  // q: one block per row
        std::vector<std::pair<int, int>> cells;
        for (int col = cb * kBlock; col < c_end; ++col) cells.emplace_back(r, col);
        quantize_block(cells, at(l.q, r, cb), 0, true, false);
      }
      for (int col = cb * kBlock; c.want_t && col < c_end; ++col) {  // q_t: one block per column
        std::vector<std::pair<int, int>> cells;
        for (int r = rb * kBlock; r < r_end; ++r) cells.emplace_back(r, col);
        quantize_block(cells, 0, at(l.t, col, rb), false, true);
      }
    }
  return out;
}

std::size_t scale_mismatches(const std::vector<float>& got, const std::vector<float>& expected, const std::string& what) {
  std::size_t count = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (bits_of(got[i]) == bits_of(expected[i])) continue;
    if (count++ == 0)
      ADD_FAILURE() << what << ": first scale_inv mismatch at slot " << i << ": got " << got[i] << ", expected "
                    << expected[i];
  }
  return count;
}

Quantized run_device(const std::vector<float>& x, const BlockCase& c, DType t, Fp8Blocks b, const Layouts& l) {
  const std::size_t n = static_cast<std::size_t>(c.rows) * c.cols;
  std::vector<float> padded(c.x_offset, 0.f);
  padded.insert(padded.end(), x.begin(), x.end());
  DeviceBuffer<nv_bfloat16> d_x(to_bf16(padded));
  DeviceBuffer<fp8_byte> d_q(n), d_t(n);
  DeviceBuffer<float> d_qs(l.q_count), d_ts(l.t_count);
  for (auto* buf : {&d_q, &d_t}) buf->poison();
  d_qs.poison();
  d_ts.poison();
  kernels::quantize_blocks_fp8(c.want_q ? d_q.get() : nullptr, c.want_q ? d_qs.get() : nullptr, l.q,
                               c.want_t ? d_t.get() : nullptr, c.want_t ? d_ts.get() : nullptr, l.t, t, b,
                               d_x.get() + c.x_offset, c.rows, c.cols, nullptr);
  sync_and_check();
  return {d_q.download(), d_t.download(), d_qs.download(), d_ts.download()};
}

void check_case(const BlockCase& c, DType t, Fp8Blocks b, const std::vector<float>& x) {
  const Layouts l = layouts_for(c, b);
  const Quantized want = reference_blocks(x, c, t, b, l);
  const Quantized got = run_device(x, c, t, b, l);
  const std::string what = describe(c, t, b);
  EXPECT_EQ(mismatches(got.q, want.q, what + " q"), 0u);
  EXPECT_EQ(mismatches(got.q_t, want.q_t, what + " q_t"), 0u);
  EXPECT_EQ(scale_mismatches(got.q_scale_inv, want.q_scale_inv, what + " q"), 0u);
  EXPECT_EQ(scale_mismatches(got.q_t_scale_inv, want.q_t_scale_inv, what + " q_t"), 0u);
}

TEST(QuantizeBlocksFp8, BitExactAgainstPerBlockReference) {
  const BlockCase cases[] = {
      {256, 384, true, true, 0, true},  {200, 136, true, true, 0, false}, {130, 100, true, true, 0, true},
      {128, 256, true, true, 1, false}, {1, 1, true, true, 0, true},      {300, 520, true, false, 0, false},
      {300, 520, false, true, 0, true}, {64, 896, true, true, 0, true},
  };
  std::uint64_t seed = 200;
  for (DType t : kFp8Types)
    for (Fp8Blocks b : kBlockShapes)
      for (const BlockCase& c : cases)
        check_case(c, t, b, wide_range_values(static_cast<std::size_t>(c.rows) * c.cols, ++seed));
}

// A NaN poisons its own blocks only; an all-zero block gets scale 1 and zeros.
TEST(QuantizeBlocksFp8, NaNAndZeroStayInTheirBlocks) {
  const BlockCase c{256, 256, true, true, 0, true};
  std::vector<float> x = wide_range_values(256 * 256, 300);
  x[5 * 256 + 7] = NAN;                                     // block (0, 0)
  for (int r = 128; r < 256; ++r)
    for (int col = 128; col < 256; ++col) x[r * 256 + col] = 0.f;  // block (1, 1)
  for (Fp8Blocks b : kBlockShapes) {
    const Layouts l = layouts_for(c, b);
    const Quantized got = run_device(x, c, DType::E4M3, b, l);
    const Quantized want = reference_blocks(x, c, DType::E4M3, b, l);
    const std::string what = describe(c, DType::E4M3, b);
    // NaN bytes may differ in sign between host and device conversion: compare NaN-ness there.
    for (std::size_t i = 0; i < got.q.size(); ++i) {
      const bool nan_want = std::isnan(fp8_to_float(want.q[i], DType::E4M3));
      ASSERT_EQ(std::isnan(fp8_to_float(got.q[i], DType::E4M3)), nan_want) << what << " q at " << i;
      if (!nan_want) ASSERT_EQ(got.q[i], want.q[i]) << what << " q at " << i;
    }
    EXPECT_TRUE(std::isnan(got.q_scale_inv[at(l.q, b == Fp8Blocks::Row128 ? 5 : 0, 0)])) << what;
    EXPECT_EQ(got.q_scale_inv[at(l.q, b == Fp8Blocks::Row128 ? 200 : 1, 1)], 1.f) << what << ": zero block";
    EXPECT_EQ(fp8_to_float(got.q[200 * 256 + 200], DType::E4M3), 0.f) << what;
    // Blocks away from the NaN are exact.
    EXPECT_EQ(got.q[200 * 256 + 3], want.q[200 * 256 + 3]) << what;
  }
}

TEST(QuantizeBlocksFp8, RejectsBadArguments) {
  DeviceBuffer<nv_bfloat16> d_x(256);
  DeviceBuffer<fp8_byte> d_q(256);
  DeviceBuffer<float> d_s(16);
  const ScaleLayout l{1, 1};
  EXPECT_THROW(kernels::quantize_blocks_fp8(nullptr, nullptr, l, nullptr, nullptr, l, DType::E4M3, Fp8Blocks::Row128,
                                            d_x.get(), 16, 16, nullptr),
               Error);
  EXPECT_THROW(kernels::quantize_blocks_fp8(d_q.get(), nullptr, l, nullptr, nullptr, l, DType::E4M3, Fp8Blocks::Row128,
                                            d_x.get(), 16, 16, nullptr),
               Error);
  EXPECT_THROW(kernels::quantize_blocks_fp8(d_q.get(), d_s.get(), l, nullptr, nullptr, l, DType::BF16,
                                            Fp8Blocks::Row128, d_x.get(), 16, 16, nullptr),
               Error);
  EXPECT_THROW(kernels::quantize_blocks_fp8(d_q.get(), d_s.get(), l, nullptr, nullptr, l, DType::E4M3,
                                            Fp8Blocks::Row128, d_x.get(), 0, 16, nullptr),
               Error);
}

// Timing printout at the 0.5B model's shapes (16384 rows), both layouts; the first row is checked
// against the reference (a row's q depends on that row alone).
TEST(QuantizeBlocksFp8, Bandwidth) {
  for (int cols : {896, 4864}) {
    const int rows = 16384;
    const std::size_t n = static_cast<std::size_t>(rows) * cols;
    const std::vector<float> x = round_bf16(random_normal(n, cols));
    const BlockCase c{rows, cols, true, true, 0, true};
    const Layouts l = layouts_for(c, Fp8Blocks::Row128);
    DeviceBuffer<nv_bfloat16> d_x(to_bf16(x));
    DeviceBuffer<fp8_byte> d_q(n), d_t(n);
    DeviceBuffer<float> d_qs(l.q_count), d_ts(l.t_count);
    const double ms = mean_ms([&] {
      kernels::quantize_blocks_fp8(d_q.get(), d_qs.get(), l.q, d_t.get(), d_ts.get(), l.t, DType::E4M3,
                                   Fp8Blocks::Row128, d_x.get(), rows, cols, nullptr);
    });
    report_bandwidth("quantize_blocks_fp8 1x128 e4m3 " + std::to_string(rows) + "x" + std::to_string(cols),
                     static_cast<double>(n) * (sizeof(nv_bfloat16) + 2), ms);
    const BlockCase first_row{1, cols, true, false, 0, true};
    const std::vector<float> row(x.begin(), x.begin() + cols);
    const Quantized want = reference_blocks(row, first_row, DType::E4M3, Fp8Blocks::Row128,
                                            layouts_for(first_row, Fp8Blocks::Row128));
    const std::vector<fp8_byte> q = d_q.download();
    EXPECT_EQ(mismatches(std::vector<fp8_byte>(q.begin(), q.begin() + cols), want.q, "first row"), 0u);
  }
}

}  // namespace
}  // namespace llmq::test
