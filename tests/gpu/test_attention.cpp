// Causal GQA attention (src/kernels/attention.h), cuDNN bf16 path and fp32 fallback, against a plain
// CPU loop in double that mirrors the math in attention.h.
// Tolerances (relative L2 over the whole tensor):
//   fp32 fallback: att, lse, dq, dk, dv < 1e-5.
//   cuDNN bf16:    att, dq, dk, dv < 1e-2 (bf16 outputs, bf16 probabilities inside the fused kernels);
//                  lse < 1e-4 (fp32 output computed from exact bf16 inputs with fp32 accumulation; only
//                  the fast exp/log approximations differ from the reference).
// Sequence lengths include T=100 (not a multiple of cuDNN's 64/128-row tiles or of the fallback's 256).
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "core/tensor.h"
#include "gpu_test_utils.h"
#include "kernels/attention.h"

namespace llmq::test {
namespace {

using kernels::AttentionContext;

constexpr double kTolFp32 = 1e-5;
constexpr double kTolBf16 = 1e-2;
constexpr double kTolBf16Lse = 1e-4;

struct Shape {
  int B, T, Hq, Hkv, Hs;
  int heads() const { return Hq + 2 * Hkv; }
  std::size_t qkv_size() const { return static_cast<std::size_t>(B) * T * heads() * Hs; }
  std::size_t att_size() const { return static_cast<std::size_t>(B) * T * Hq * Hs; }
  std::size_t lse_size() const { return static_cast<std::size_t>(B) * Hq * T; }
  std::size_t qkv_index(int b, int t, int head, int d) const {
    return ((static_cast<std::size_t>(b) * T + t) * heads() + head) * Hs + d;
  }
  std::size_t att_index(int b, int t, int h, int d) const {
    return ((static_cast<std::size_t>(b) * T + t) * Hq + h) * Hs + d;
  }
  std::size_t lse_index(int b, int h, int t) const { return (static_cast<std::size_t>(b) * Hq + h) * T + t; }
  std::string name() const {
    return "B=" + std::to_string(B) + " T=" + std::to_string(T) + " Hq=" + std::to_string(Hq) +
           " Hkv=" + std::to_string(Hkv) + " Hs=" + std::to_string(Hs);
  }
};

struct Results {
  std::vector<double> att, lse, d_qkv;
};

// Forward and backward in double, straight from the formulas in attention.h.
Results reference(const Shape& s, const std::vector<float>& qkv, const std::vector<float>& d_att) {
  Results r{std::vector<double>(s.att_size()), std::vector<double>(s.lse_size()), std::vector<double>(s.qkv_size())};
  const double scale = 1.0 / std::sqrt(static_cast<double>(s.Hs));
  const int group = s.Hq / s.Hkv;
  auto q = [&](int b, int t, int h, int d) { return static_cast<double>(qkv[s.qkv_index(b, t, h, d)]); };
  auto k = [&](int b, int t, int g, int d) { return static_cast<double>(qkv[s.qkv_index(b, t, s.Hq + g, d)]); };
  auto v = [&](int b, int t, int g, int d) { return static_cast<double>(qkv[s.qkv_index(b, t, s.Hq + s.Hkv + g, d)]); };
  auto d_o = [&](int b, int t, int h, int d) { return static_cast<double>(d_att[s.att_index(b, t, h, d)]); };

  std::vector<double> P(static_cast<std::size_t>(s.T) * s.T);
  for (int b = 0; b < s.B; ++b) {
    for (int h = 0; h < s.Hq; ++h) {
      const int g = h / group;
      // Forward.
      for (int i = 0; i < s.T; ++i) {
        double m = -INFINITY;
        for (int j = 0; j <= i; ++j) {
          double dot = 0;
          for (int d = 0; d < s.Hs; ++d) dot += q(b, i, h, d) * k(b, j, g, d);
          P[static_cast<std::size_t>(i) * s.T + j] = scale * dot;
          m = std::max(m, scale * dot);
        }
        double sum = 0;
        for (int j = 0; j <= i; ++j) sum += std::exp(P[static_cast<std::size_t>(i) * s.T + j] - m);
        const double lse = m + std::log(sum);
        r.lse[s.lse_index(b, h, i)] = lse;
        for (int j = 0; j <= i; ++j) {
          double& p = P[static_cast<std::size_t>(i) * s.T + j];
          p = std::exp(p - lse);
          for (int d = 0; d < s.Hs; ++d) r.att[s.att_index(b, i, h, d)] += p * v(b, j, g, d);
        }
      }
      // Backward.
      for (int i = 0; i < s.T; ++i) {
        double D = 0;
        for (int d = 0; d < s.Hs; ++d) D += d_o(b, i, h, d) * r.att[s.att_index(b, i, h, d)];
        for (int j = 0; j <= i; ++j) {
          const double p = P[static_cast<std::size_t>(i) * s.T + j];
          double dp = 0;
          for (int d = 0; d < s.Hs; ++d) dp += d_o(b, i, h, d) * v(b, j, g, d);
          const double ds = p * (dp - D);
          for (int d = 0; d < s.Hs; ++d) {
            r.d_qkv[s.qkv_index(b, i, h, d)] += scale * ds * k(b, j, g, d);
            r.d_qkv[s.qkv_index(b, j, s.Hq + g, d)] += scale * ds * q(b, i, h, d);
            r.d_qkv[s.qkv_index(b, j, s.Hq + s.Hkv + g, d)] += p * d_o(b, i, h, d);
          }
        }
      }
    }
  }
  return r;
}

enum class Part { Q, K, V };
const char* part_name(Part p) { return p == Part::Q ? "dq" : p == Part::K ? "dk" : "dv"; }

// The elements of one part (query, key or value heads) of a packed [B, T, Hq+2*Hkv, Hs] tensor.
template <typename T>
std::vector<double> part_of(const Shape& s, const std::vector<T>& packed, Part part) {
  const int first = part == Part::Q ? 0 : part == Part::K ? s.Hq : s.Hq + s.Hkv;
  const int count = part == Part::Q ? s.Hq : s.Hkv;
  std::vector<double> out;
  for (int b = 0; b < s.B; ++b)
    for (int t = 0; t < s.T; ++t)
      for (int h = first; h < first + count; ++h)
        for (int d = 0; d < s.Hs; ++d) out.push_back(static_cast<double>(packed[s.qkv_index(b, t, h, d)]));
  return out;
}

struct Inputs {
  std::vector<float> qkv, d_att;
};

// Random inputs, rounded through bf16 so that both paths and the reference see the same values.
Inputs make_inputs(const Shape& s, std::uint64_t seed) {
  return {round_bf16(random_normal(s.qkv_size(), seed)), round_bf16(random_normal(s.att_size(), seed + 1))};
}

struct Errors {
  double att, lse, dq, dk, dv;
};

std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }
std::vector<double> to_double(const std::vector<__nv_bfloat16>& v) { return to_double(to_float(v)); }

template <typename T>
Errors compare(const Shape& s, const Results& ref, const std::vector<T>& att, const std::vector<float>& lse,
               const std::vector<T>& d_qkv) {
  const std::vector<double> att_d = to_double(att), d_qkv_d = to_double(d_qkv);
  return {rel_l2(att_d, ref.att), rel_l2(lse, ref.lse),
          rel_l2(part_of(s, d_qkv_d, Part::Q), part_of(s, ref.d_qkv, Part::Q)),
          rel_l2(part_of(s, d_qkv_d, Part::K), part_of(s, ref.d_qkv, Part::K)),
          rel_l2(part_of(s, d_qkv_d, Part::V), part_of(s, ref.d_qkv, Part::V))};
}

void print(const char* what, const Shape& s, const Errors& e) {
  std::printf("%s %s: rel L2 att %.2e lse %.2e dq %.2e dk %.2e dv %.2e\n", what, s.name().c_str(), e.att, e.lse, e.dq,
              e.dk, e.dv);
}

// The inputs on the device as T (fp32, or bf16 for cuDNN) and poisoned outputs; lse is fp32 either way.
template <typename T>
struct DeviceTensors {
  DeviceTensors(const Shape& s, const Inputs& in)
      : qkv(as_device_type<T>(in.qkv)), d_att(as_device_type<T>(in.d_att)), att(s.att_size()), d_qkv(s.qkv_size()),
        lse(s.lse_size()) {
    att.poison();
    lse.poison();
    d_qkv.poison();
  }
  Errors compare_with(const Shape& s, const Results& ref) const {
    return compare(s, ref, att.download(), lse.download(), d_qkv.download());
  }
  DeviceBuffer<T> qkv, d_att, att, d_qkv;
  DeviceBuffer<float> lse;
};

Errors run_fp32(const Shape& s, const Inputs& in) {
  DeviceTensors<float> d(s, in);
  kernels::attention_forward_fp32(d.att.get(), d.lse.get(), d.qkv.get(), s.B, s.T, s.Hq, s.Hkv, s.Hs, nullptr);
  kernels::attention_backward_fp32(d.d_qkv.get(), d.d_att.get(), d.att.get(), d.lse.get(), d.qkv.get(), s.B, s.T,
                                   s.Hq, s.Hkv, s.Hs, nullptr);
  sync_and_check();
  return d.compare_with(s, reference(s, in.qkv, in.d_att));
}

Errors run_cudnn(AttentionContext& ctx, const Shape& s, const Inputs& in) {
  const std::size_t ws_bytes = ctx.workspace_bytes(s.B, s.T, s.Hq, s.Hkv, s.Hs);
  DeviceBuffer<std::byte> workspace(ws_bytes);
  DeviceTensors<__nv_bfloat16> d(s, in);
  ctx.forward(d.att.get(), d.lse.get(), d.qkv.get(), s.B, s.T, s.Hq, s.Hkv, s.Hs, workspace.get(), ws_bytes, nullptr);
  ctx.backward(d.d_qkv.get(), d.d_att.get(), d.att.get(), d.lse.get(), d.qkv.get(), s.B, s.T, s.Hq, s.Hkv, s.Hs,
               workspace.get(), ws_bytes, nullptr);
  sync_and_check();
  return d.compare_with(s, reference(s, in.qkv, in.d_att));
}

const std::vector<Shape> kShapes = {
    {2, 64, 14, 2, 64},   // Qwen2.5-0.5B heads: GQA groups of 7
    {2, 100, 14, 2, 64},  // T not a multiple of the tile sizes
    {2, 64, 4, 4, 128},   // plain multi-head attention, Hs 128
    {2, 100, 4, 4, 128},
};

void expect_within(const Errors& e, double tol_main, double tol_lse, const Shape& s) {
  EXPECT_LT(e.att, tol_main) << "att " << s.name();
  EXPECT_LT(e.lse, tol_lse) << "lse " << s.name();
  EXPECT_LT(e.dq, tol_main) << part_name(Part::Q) << " " << s.name();
  EXPECT_LT(e.dk, tol_main) << part_name(Part::K) << " " << s.name();
  EXPECT_LT(e.dv, tol_main) << part_name(Part::V) << " " << s.name();
}

// The fp32 fallback on random inputs (seed) against the reference, within the fp32 tolerance.
void check_fp32(const Shape& s, std::uint64_t seed) {
  const Errors e = run_fp32(s, make_inputs(s, seed));
  print("fp32", s, e);
  expect_within(e, kTolFp32, kTolFp32, s);
}

TEST(AttentionFp32, MatchesReference) {
  std::uint64_t seed = 10;
  for (const Shape& s : kShapes) check_fp32(s, seed += 10);
}

// A head size that is not a multiple of 32 and an odd sequence length with groups of 2.
TEST(AttentionFp32, OddShapes) { check_fp32({1, 37, 6, 3, 40}, 77); }

// Longer than one tile of the fallback's 256 keys.
TEST(AttentionFp32, LongerThanOneTile) { check_fp32({1, 300, 2, 1, 64}, 78); }

TEST(AttentionCudnn, MatchesReference) {
  AttentionContext ctx;
  std::uint64_t seed = 110;
  for (const Shape& s : kShapes) {
    const Errors e = run_cudnn(ctx, s, make_inputs(s, seed += 10));
    print("cudnn bf16", s, e);
    expect_within(e, kTolBf16, kTolBf16Lse, s);
  }
}

TEST(AttentionCudnn, BackwardIsBitReproducible) {
  // Resuming a run from a checkpoint replays the same steps: the backward must not depend on the
  // order in which thread blocks finish (cuDNN's default dQ accumulation uses atomics).
  AttentionContext ctx;
  const Shape s{4, 512, 14, 2, 64};
  const std::size_t ws_bytes = ctx.workspace_bytes(s.B, s.T, s.Hq, s.Hkv, s.Hs);
  DeviceBuffer<__nv_bfloat16> qkv(to_bf16(random_floats(s.qkv_size(), 11))), att(s.att_size()),
      d_att(to_bf16(random_floats(s.att_size(), 12))), d_qkv(s.qkv_size());
  DeviceBuffer<float> lse(s.lse_size());
  DeviceBuffer<std::byte> workspace(std::max<std::size_t>(ws_bytes, 1));
  ctx.forward(att.get(), lse.get(), qkv.get(), s.B, s.T, s.Hq, s.Hkv, s.Hs, workspace.get(), ws_bytes, nullptr);
  std::vector<std::vector<__nv_bfloat16>> runs;
  for (int run = 0; run < 3; ++run) {
    d_qkv.poison();
    ctx.backward(d_qkv.get(), d_att.get(), att.get(), lse.get(), qkv.get(), s.B, s.T, s.Hq, s.Hkv, s.Hs,
                 workspace.get(), ws_bytes, nullptr);
    sync_and_check();
    runs.push_back(d_qkv.download());
  }
  for (int run = 1; run < 3; ++run)
    EXPECT_EQ(0, std::memcmp(runs[0].data(), runs[run].data(), runs[0].size() * sizeof(__nv_bfloat16)))
        << "backward run " << run << " differs from run 0";
}

TEST(AttentionCudnn, GraphsAreBuiltOncePerShape) {
  AttentionContext ctx;
  const Shape s{1, 64, 4, 2, 64};
  const Inputs in = make_inputs(s, 300);
  run_cudnn(ctx, s, in);
  EXPECT_EQ(ctx.cached_graphs(), 2u);  // one forward, one backward
  const Errors again = run_cudnn(ctx, s, in);
  EXPECT_EQ(ctx.cached_graphs(), 2u);
  expect_within(again, kTolBf16, kTolBf16Lse, s);
  ctx.workspace_bytes(1, 128, 4, 2, 64);
  EXPECT_EQ(ctx.cached_graphs(), 4u);
}

// kernels::attention_forward and attention_backward on Tensors of element type T (fp32 or bf16).
template <typename T>
Errors run_tensor_api(AttentionContext& ctx, const Shape& s, const Inputs& in, const Results& ref,
                      const Tensor& workspace) {
  constexpr DType dtype = std::is_same_v<T, float> ? DType::FP32 : DType::BF16;
  const std::initializer_list<std::int64_t> qkv_shape = {s.B, s.T, s.heads(), s.Hs};
  const std::initializer_list<std::int64_t> att_shape = {s.B, s.T, s.Hq * s.Hs};  // flattened heads are accepted
  const std::initializer_list<std::int64_t> lse_shape = {s.B, s.Hq, s.T};
  DeviceTensors<T> d(s, in);
  const Tensor tqkv(d.qkv.get(), dtype, qkv_shape), tatt(d.att.get(), dtype, att_shape),
      tlse(d.lse.get(), DType::FP32, lse_shape), td_att(d.d_att.get(), dtype, att_shape),
      td_qkv(d.d_qkv.get(), dtype, qkv_shape);
  kernels::attention_forward(ctx, tatt, tlse, tqkv, s.Hq, s.Hkv, workspace, nullptr);
  kernels::attention_backward(ctx, td_qkv, td_att, tatt, tlse, tqkv, s.Hq, s.Hkv, workspace, nullptr);
  sync_and_check();
  return d.compare_with(s, ref);
}

// The Tensor-level wrappers dispatch on dtype: fp32 to the fallback, bf16 to cuDNN.
TEST(AttentionTensorApi, DispatchesOnDtype) {
  AttentionContext ctx;
  const Shape s{2, 48, 4, 2, 64};
  const Inputs in = make_inputs(s, 400);
  const Results ref = reference(s, in.qkv, in.d_att);
  const Errors fp32 = run_tensor_api<float>(ctx, s, in, ref, Tensor{});
  print("tensor fp32", s, fp32);
  expect_within(fp32, kTolFp32, kTolFp32, s);

  const std::size_t ws_bytes = ctx.workspace_bytes(s.B, s.T, s.Hq, s.Hkv, s.Hs);
  DeviceBuffer<std::byte> workspace(ws_bytes);
  const Tensor tws(workspace.get(), DType::UINT8, {static_cast<std::int64_t>(std::max<std::size_t>(ws_bytes, 1))});
  const Errors bf16 = run_tensor_api<__nv_bfloat16>(ctx, s, in, ref, tws);
  print("tensor bf16", s, bf16);
  expect_within(bf16, kTolBf16, kTolBf16Lse, s);
}

// ---- bad inputs --------------------------------------------------------------------------------

TEST(AttentionErrors, RejectsBadHeadCounts) {
  AttentionContext ctx;
  DeviceBuffer<float> buf(1 << 16);
  expect_error([&] { ctx.workspace_bytes(1, 16, 6, 4, 64); }, "not a multiple");
  expect_error([&] { ctx.workspace_bytes(1, 16, 4, 4, 20); }, "head size 20");
  expect_error([&] { kernels::attention_forward_fp32(buf.get(), buf.get(), buf.get(), 1, 16, 6, 4, 8, nullptr); },
               "not a multiple");
  expect_error([&] { kernels::attention_forward_fp32(buf.get(), buf.get(), buf.get(), 1, 2, 1, 1, 300, nullptr); },
               "head size 300");
}

TEST(AttentionErrors, RejectsTooSmallWorkspace) {
  // workspace_bytes() is the larger of the forward and backward needs, so one byte less must be
  // refused by at least the pass that needs the maximum (the other may legitimately accept it).
  AttentionContext ctx;
  const Shape s{1, 64, 4, 2, 64};
  const std::size_t needed = ctx.workspace_bytes(s.B, s.T, s.Hq, s.Hkv, s.Hs);
  if (needed == 0) GTEST_SKIP() << "cuDNN needs no workspace for this shape; nothing to under-size";
  DeviceBuffer<__nv_bfloat16> qkv(s.qkv_size()), att(s.att_size()), d_att(s.att_size()), d_qkv(s.qkv_size());
  DeviceBuffer<float> lse(s.lse_size());
  DeviceBuffer<std::byte> workspace(needed);
  int refused = 0;
  auto refuses = [&](auto&& call) {
    try {
      call();
      sync_and_check();
    } catch (const llmq::Error& e) {
      EXPECT_NE(std::string(e.what()).find("workspace"), std::string::npos) << e.what();
      ++refused;
    }
  };
  refuses([&] { ctx.forward(att.get(), lse.get(), qkv.get(), s.B, s.T, s.Hq, s.Hkv, s.Hs, workspace.get(), needed - 1,
                            nullptr); });
  refuses([&] { ctx.backward(d_qkv.get(), d_att.get(), att.get(), lse.get(), qkv.get(), s.B, s.T, s.Hq, s.Hkv, s.Hs,
                             workspace.get(), needed - 1, nullptr); });
  EXPECT_GE(refused, 1) << "neither pass refused a workspace one byte smaller than workspace_bytes()";
}

TEST(AttentionErrors, TensorWrapperRejectsBadShapes) {
  AttentionContext ctx;
  const Shape s{1, 16, 4, 2, 64};
  DeviceBuffer<float> qkv(s.qkv_size()), att(s.att_size()), lse(s.lse_size());
  const Tensor tqkv(qkv.get(), DType::FP32, {s.B, s.T, s.heads(), s.Hs});
  const Tensor tatt(att.get(), DType::FP32, {s.B, s.T, s.Hq, s.Hs});
  const Tensor tlse(lse.get(), DType::FP32, {s.B, s.Hq, s.T});
  // qkv holding a different number of heads than Hq + 2*Hkv.
  expect_error([&] { kernels::attention_forward(ctx, tatt, tlse, tqkv, 4, 1, Tensor{}, nullptr); }, "heads per token");
  // lse transposed ([B, T, Hq] instead of [B, Hq, T]).
  expect_error([&] { kernels::attention_forward(ctx, tatt, Tensor(lse.get(), DType::FP32, {s.B, s.T, s.Hq}), tqkv,
                                                s.Hq, s.Hkv, Tensor{}, nullptr); },
               "lse");
  // att with the wrong dtype.
  expect_error([&] { kernels::attention_forward(ctx, Tensor(att.get(), DType::BF16, {s.B, s.T, s.Hq, s.Hs}), tlse,
                                                tqkv, s.Hq, s.Hkv, Tensor{}, nullptr); },
               "att");
  // Unsupported dtype.
  expect_error([&] { kernels::attention_forward(ctx, tatt, tlse, Tensor(qkv.get(), DType::INT32,
                                                {s.B, s.T, s.heads(), s.Hs}), s.Hq, s.Hkv, Tensor{}, nullptr); },
               "supports bf16");
}

}  // namespace
}  // namespace llmq::test
