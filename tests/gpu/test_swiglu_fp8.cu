// SwiGLU straight to FP8 (swiglu_fp8.cu).
// Per-tensor e5m2 backward (swiglu_backward_abs_max + swiglu_backward_e5m2):
// the abs-max and every byte of q, q_t and scale_inv must equal the unfused path (swiglu_backward
// into bf16 with its abs-max, then quantize_transpose_fp8 to e5m2), which the SwiGLU and quantize
// tests check against CPU references; the dequantized result must also match a double-precision
// CPU SwiGLU gradient to e5m2's precision (relative L2 < 0.1: 2 mantissa bits, bf16 rounding first).
// Sizes cover rows and columns that are not multiples of the 64 x 64 tile, D % 16 == 8 (the up half
// of a row is only 8-byte aligned in q: element stores) and N % 16 != 0 (element stores in q_t).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "gpu_test_utils.h"
#include "kernels/quantize.h"
#include "kernels/quantize_blocks.h"
#include "kernels/swiglu.h"

namespace llmq::test {
namespace {

using byte = std::uint8_t;

std::uint32_t bits_of(float f) {
  std::uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  return b;
}

struct Outputs {
  float absmax = 0, scale_inv = 0;
  std::vector<byte> q, q_t;
};

struct Inputs {
  int N, D;
  std::vector<float> h_host, dout_host;  // bf16-representable
  DeviceBuffer<__nv_bfloat16> h, dout;
  Inputs(int n, int d, std::uint64_t seed)
      : N(n),
        D(d),
        h_host(round_bf16(random_normal(static_cast<std::size_t>(n) * 2 * d, seed, 2.f))),
        dout_host(round_bf16(random_normal(static_cast<std::size_t>(n) * d, seed + 1))),
        h(to_bf16(h_host)),
        dout(to_bf16(dout_host)) {}
  std::size_t elements() const { return static_cast<std::size_t>(N) * 2 * D; }
};

// slots: [0] abs-max (zeroed), [4] scale_inv: 16 bytes apart, as the model keeps them.
Outputs download(DeviceBuffer<float>& slots, DeviceBuffer<byte>& q, DeviceBuffer<byte>& q_t) {
  const std::vector<float> s = slots.download();
  return {s[0], s[4], q.download(), q_t.download()};
}

Outputs unfused(const Inputs& in) {
  DeviceBuffer<__nv_bfloat16> dh(in.elements());
  DeviceBuffer<byte> q(in.elements()), q_t(in.elements());
  DeviceBuffer<float> slots(std::vector<float>(8, 0.f));
  q.poison();
  q_t.poison();
  kernels::swiglu_backward(dh.get(), in.dout.get(), in.h.get(), in.N, in.D, nullptr, slots.get());
  kernels::quantize_transpose_fp8(q.get(), q_t.get(), DType::E5M2, slots.get() + 4, dh.get(), slots.get(), in.N,
                                  2 * in.D, nullptr);
  sync_and_check();
  return download(slots, q, q_t);
}

Outputs fused(const Inputs& in) {
  DeviceBuffer<byte> q(in.elements()), q_t(in.elements());
  DeviceBuffer<float> slots(std::vector<float>(8, 0.f));
  q.poison();
  q_t.poison();
  kernels::swiglu_backward_abs_max(slots.get(), in.dout.get(), in.h.get(), in.N, in.D, nullptr);
  kernels::swiglu_backward_e5m2(q.get(), q_t.get(), slots.get() + 4, in.dout.get(), in.h.get(), slots.get(), in.N,
                                in.D, nullptr);
  sync_and_check();
  return download(slots, q, q_t);
}

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// Relative L2 of the dequantized row-major q against the double-precision SwiGLU gradient.
double error_against_cpu(const Inputs& in, const Outputs& out) {
  std::vector<double> want(in.elements());
  std::vector<float> got(in.elements());
  for (int n = 0; n < in.N; ++n) {
    for (int j = 0; j < in.D; ++j) {
      const std::size_t gate = static_cast<std::size_t>(n) * 2 * in.D + j, up = gate + in.D;
      const double g = in.h_host[gate], u = in.h_host[up], dy = in.dout_host[static_cast<std::size_t>(n) * in.D + j];
      const double sig = sigmoid(g);
      want[gate] = dy * u * sig * (1.0 + g * (1.0 - sig));
      want[up] = dy * g * sig;
    }
  }
  for (std::size_t i = 0; i < got.size(); ++i) got[i] = fp8_to_float(out.q[i], DType::E5M2) * out.scale_inv;
  return rel_l2(got, want);
}

TEST(SwigluBackwardE5m2, SameBytesAsSwigluBackwardThenQuantizeTranspose) {
  struct Size {
    int N, D;
  };
  for (const Size s : {Size{112, 616}, Size{37, 64}, Size{100, 200}, Size{1, 8}, Size{1024, 4864}}) {
    SCOPED_TRACE(testing::Message() << "N=" << s.N << " D=" << s.D);
    const Inputs in(s.N, s.D, 80 + s.N);
    const Outputs want = unfused(in), got = fused(in);
    EXPECT_GT(want.absmax, 0.f);
    EXPECT_EQ(bits_of(got.absmax), bits_of(want.absmax));
    EXPECT_EQ(bits_of(got.scale_inv), bits_of(want.scale_inv));
    EXPECT_TRUE(got.q == want.q) << "row-major e5m2 bytes differ";
    EXPECT_TRUE(got.q_t == want.q_t) << "transposed e5m2 bytes differ";
    EXPECT_LT(error_against_cpu(in, got), 0.1);
  }
}

TEST(SwigluBackwardE5m2, Bandwidth) {
  const Inputs in(16384, 4864, 90);  // Qwen2.5-0.5B MLP at B*T = 16k
  DeviceBuffer<byte> q(in.elements()), q_t(in.elements());
  DeviceBuffer<float> slots(std::vector<float>(8, 0.f));
  kernels::swiglu_backward_abs_max(slots.get(), in.dout.get(), in.h.get(), in.N, in.D, nullptr);
  const double ms = mean_ms([&] {
    kernels::swiglu_backward_e5m2(q.get(), q_t.get(), slots.get() + 4, in.dout.get(), in.h.get(), slots.get(), in.N,
                                  in.D, nullptr);
  });
  // Reads gate, up and dout (6 bytes per element of dout), writes 2 x 2 FP8 bytes.
  report_bandwidth("swiglu_backward_e5m2 16384 x 4864", 10.0 * in.N * in.D, ms);
  EXPECT_GT(slots.download()[4], 0.f);
}

// ---- block-scaled (1 x 128) forward and backward ---------------------------------------------------
// Every byte and scale_inv must equal the unfused path (swiglu_forward / swiglu_backward into bf16,
// then quantize_blocks_fp8 with Row128 blocks), which test_swiglu and test_quantize_blocks check
// against CPU references. Sizes: D % 128 == 0 (the backward pairs gate and up tiles) and not,
// rows not a multiple of 16 or of the 128-row block.

struct BlockOutputs {
  std::vector<byte> q, q_t;
  std::vector<float> q_scales, t_scales;
};

// Runs `quantize(q, q_scales, q_layout, q_t, t_scales, t_layout)` for a [rows, cols] result.
template <typename F>
BlockOutputs run_blocks(int rows, int cols, F&& quantize) {
  const std::size_t n = static_cast<std::size_t>(rows) * cols;
  const int row_blocks = (rows + 127) / 128, col_blocks = (cols + 127) / 128;
  const kernels::ScaleLayout q_layout{col_blocks, 1}, t_layout{1, cols};
  DeviceBuffer<byte> q(n), q_t(n);
  DeviceBuffer<float> qs(static_cast<std::size_t>(rows) * col_blocks), ts(static_cast<std::size_t>(cols) * row_blocks);
  q.poison();
  q_t.poison();
  qs.poison();
  ts.poison();
  quantize(q.get(), qs.get(), q_layout, q_t.get(), ts.get(), t_layout);
  sync_and_check();
  return {q.download(), q_t.download(), qs.download(), ts.download()};
}

void expect_same(const BlockOutputs& got, const BlockOutputs& want, const std::string& what) {
  EXPECT_TRUE(got.q == want.q) << what << ": q differs";
  EXPECT_TRUE(got.q_t == want.q_t) << what << ": q_t differs";
  ASSERT_EQ(got.q_scales.size(), want.q_scales.size());
  ASSERT_EQ(got.t_scales.size(), want.t_scales.size());
  for (std::size_t i = 0; i < got.q_scales.size(); ++i)
    ASSERT_EQ(bits_of(got.q_scales[i]), bits_of(want.q_scales[i])) << what << ": q scale " << i;
  for (std::size_t i = 0; i < got.t_scales.size(); ++i)
    ASSERT_EQ(bits_of(got.t_scales[i]), bits_of(want.t_scales[i])) << what << ": q_t scale " << i;
}

TEST(SwigluBlocksFp8, ForwardSameBytesAsSwigluForwardThenQuantizeBlocks) {
  for (auto [N, D] : {std::pair{256, 384}, std::pair{200, 136}, std::pair{130, 4864}}) {
    const Inputs in(N, D, 900 + D);
    DeviceBuffer<__nv_bfloat16> out(static_cast<std::size_t>(N) * D);
    kernels::swiglu_forward(out.get(), in.h.get(), N, D, nullptr);
    for (DType t : {DType::E4M3, DType::E5M2}) {
      const BlockOutputs want = run_blocks(N, D, [&](auto... args) {
        kernels::quantize_blocks_fp8(args..., t, kernels::Fp8Blocks::Row128, out.get(), N, D, nullptr);
      });
      const BlockOutputs got = run_blocks(N, D, [&](auto... args) {
        kernels::swiglu_forward_blocks_fp8(args..., t, in.h.get(), N, D, nullptr);
      });
      expect_same(got, want, "forward N=" + std::to_string(N) + " D=" + std::to_string(D));
    }
  }
}

TEST(SwigluBlocksFp8, BackwardSameBytesAsSwigluBackwardThenQuantizeBlocks) {
  for (auto [N, D] : {std::pair{256, 384}, std::pair{200, 136}, std::pair{130, 4864}}) {
    const Inputs in(N, D, 950 + D);
    DeviceBuffer<__nv_bfloat16> dh(in.elements());
    kernels::swiglu_backward(dh.get(), in.dout.get(), in.h.get(), N, D, nullptr);
    for (DType t : {DType::E4M3, DType::E5M2}) {
      const BlockOutputs want = run_blocks(N, 2 * D, [&](auto... args) {
        kernels::quantize_blocks_fp8(args..., t, kernels::Fp8Blocks::Row128, dh.get(), N, 2 * D, nullptr);
      });
      const BlockOutputs got = run_blocks(N, 2 * D, [&](auto... args) {
        kernels::swiglu_backward_blocks_fp8(args..., t, in.dout.get(), in.h.get(), N, D, nullptr);
      });
      expect_same(got, want, "backward N=" + std::to_string(N) + " D=" + std::to_string(D));
    }
  }
}

// Timing printout at 0.5B's shape (16384 x 4864): bytes read and written once each.
TEST(SwigluBlocksFp8, Bandwidth) {
  const Inputs in(16384, 4864, 990);
  const auto time = [&](const char* what, double bytes, auto&& launch) {
    run_blocks(in.N, 2 * in.D, [&](auto... args) {
      const double ms = mean_ms([&] { launch(args...); });
      report_bandwidth(what, bytes, ms);
    });
  };
  const double elems = static_cast<double>(in.N) * in.D;
  time("swiglu_forward_blocks_fp8 16384 x 4864", elems * (4 + 2), [&](auto... args) {
    kernels::swiglu_forward_blocks_fp8(args..., DType::E4M3, in.h.get(), in.N, in.D, nullptr);
  });
  time("swiglu_backward_blocks_fp8 16384 x 4864", elems * (6 + 4), [&](auto... args) {
    kernels::swiglu_backward_blocks_fp8(args..., DType::E5M2, in.dout.get(), in.h.get(), in.N, in.D, nullptr);
  });
}

TEST(SwigluBackwardE5m2, RejectsBadArguments) {
  DeviceBuffer<__nv_bfloat16> h(64), dout(32);
  DeviceBuffer<byte> q(64), q_t(64);
  DeviceBuffer<float> slots(8);
  expect_error([&] { kernels::swiglu_backward_e5m2(q.get(), q_t.get(), slots.get() + 4, dout.get(), h.get(),
                                                   slots.get(), 4, 12, nullptr); }, "D % 8");
  expect_error([&] { kernels::swiglu_backward_e5m2(nullptr, q_t.get(), slots.get() + 4, dout.get(), h.get(),
                                                   slots.get(), 4, 8, nullptr); }, "null pointer");
  expect_error([&] { kernels::swiglu_backward_e5m2(q.get(), q_t.get(), slots.get(), dout.get(), h.get(), slots.get(),
                                                   4, 8, nullptr); }, "same float");
  expect_error([&] { kernels::swiglu_backward_abs_max(nullptr, dout.get(), h.get(), 4, 8, nullptr); }, "null");
}

}  // namespace
}  // namespace llmq::test
