// fp8_scaling_probe: what cuBLASLt's FP8 scaling modes do on this GPU. A measurement, not a test:
// it decides whether finer-grained current scaling (one scale per row, or per 128-element block,
// which producers can compute locally, without an abs-max pass over the whole tensor) can replace
// per-tensor scaling (doc.md section 4.1). scripts/gpu_check.sh's `scaling` stage runs it.
//
// Conventions as in kernels/matmul.h: out[M, N] = a[M, K] @ b[N, K]^T, both operands K-major;
// cuBLASLt's A is our b and its B our a. Per mode, the scale of element (r, k) of an operand with
// R rows is:
//   scalar      s[0]
//   outer       s[r]                        (R values)
//   vec128      s[layout(r, k / 128)]       (one per row and 128-element block of K)
//   blk128      s[layout(r / 128, k / 128)] (one per 128 x 128 block)
//
// Part 1 (layout): for each pair of modes, a small GEMM whose scales are random powers of two
// is compared with CPU products that read the scales in each candidate layout; prints the layout
// that matched, "no match", or "no algorithm".
// Part 2 (speed): each pair of modes at the GEMM shapes of Qwen2.5-0.5B (16384 tokens) and 7B
// (2048 tokens): forward, data gradient, weight gradient; the fastest of the heuristic's top 8,
// timed in three interleaved rounds (the GPU clocks down at its power cap).
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/errors.h"

namespace {

enum class Mode { Scalar, Outer, Vec128, Blk128 };

const char* mode_name(Mode m) {
  switch (m) {
    case Mode::Scalar: return "scalar";
    case Mode::Outer: return "outer";
    case Mode::Vec128: return "vec128";
    case Mode::Blk128: return "blk128";
  }
  return "?";
}

std::int32_t cublas_mode(Mode m) {
  switch (m) {
    case Mode::Scalar: return CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F;
    case Mode::Outer: return CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
    case Mode::Vec128: return CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
    case Mode::Blk128: return CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
  }
  return 0;
}

int ceil_div(int a, int b) { return (a + b - 1) / b; }
int round_up4(int a) { return (a + 3) / 4 * 4; }

// A candidate layout: where the scale of (row block or row, K block) of an operand is stored.
struct Layout {
  std::string name;
  std::function<std::size_t(int r, int kb)> index;
};

// Candidate layouts of an operand with `rows` rows (blocks of 128 rows for blk128) and kb K blocks.
std::vector<Layout> candidate_layouts(Mode m, int rows, int k) {
  const int kb = ceil_div(k, 128);
  switch (m) {
    case Mode::Scalar: return {{"one value", [](int, int) { return std::size_t{0}; }}};
    case Mode::Outer: return {{"[rows]", [](int r, int) { return static_cast<std::size_t>(r); }}};
    case Mode::Vec128:
    case Mode::Blk128: {
      const int n = m == Mode::Vec128 ? rows : ceil_div(rows, 128);
      const std::string what = m == Mode::Vec128 ? "rows" : "row blocks";
      return {
          {fmt::format("[{}, k blocks] (k blocks contiguous)", what),
           [kb](int r, int b) { return static_cast<std::size_t>(r) * kb + b; }},
          {fmt::format("[k blocks, {}] ({} contiguous)", what, what),
           [n](int r, int b) { return static_cast<std::size_t>(b) * n + r; }},
          {fmt::format("[k blocks, {} padded to 4]", what),
           [n](int r, int b) { return static_cast<std::size_t>(b) * round_up4(n) + r; }},
          {fmt::format("[{}, k blocks padded to 4]", what),
           [kb](int r, int b) { return static_cast<std::size_t>(r) * round_up4(kb) + b; }},
      };
    }
  }
  return {};
}

// Scale index of element (r, k) under mode m and layout l.
std::size_t scale_index(Mode m, const Layout& l, int r, int k) {
  return l.index(m == Mode::Blk128 ? r / 128 : r, k / 128);
}

// Enough floats for any candidate layout, padding included.
std::size_t scale_count(int rows, int k) { return static_cast<std::size_t>(round_up4(rows) + 4) * (round_up4(ceil_div(k, 128)) + 4); }

cudaDataType_t fp8_type(bool e5m2) { return e5m2 ? CUDA_R_8F_E5M2 : CUDA_R_8F_E4M3; }

struct Gemm {
  int M, N, K;
  bool a_e5m2 = false;  // a (cuBLASLt's B) in e5m2: a gradient
  Mode a_mode = Mode::Scalar, b_mode = Mode::Scalar;
  const void* bias = nullptr;  // N bf16 values added by the epilogue (the QKV forward has one)
};

// Descriptors and the heuristic's candidates for one problem; empty `algos` when there is none.
class Plan {
 public:
  Plan(cublasLtHandle_t handle, const Gemm& g, const float* a_scale, const float* b_scale, std::size_t workspace) {
    LLMQ_CUBLAS_CHECK(cublasLtMatmulDescCreate(&op_, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t t = CUBLAS_OP_T, n = CUBLAS_OP_N;
    set(CUBLASLT_MATMUL_DESC_TRANSA, t);
    set(CUBLASLT_MATMUL_DESC_TRANSB, n);
    set(CUBLASLT_MATMUL_DESC_A_SCALE_MODE, cublas_mode(g.b_mode));
    set(CUBLASLT_MATMUL_DESC_B_SCALE_MODE, cublas_mode(g.a_mode));
    set(CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, b_scale);
    set(CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, a_scale);
    set(CUBLASLT_MATMUL_DESC_FAST_ACCUM, std::int8_t{0});
    if (g.bias) {
      set(CUBLASLT_MATMUL_DESC_EPILOGUE, CUBLASLT_EPILOGUE_BIAS);
      set(CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, static_cast<std::int32_t>(CUDA_R_16BF));
      set(CUBLASLT_MATMUL_DESC_BIAS_POINTER, g.bias);
    }
    LLMQ_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&la_, CUDA_R_8F_E4M3, g.K, g.N, g.K));
    LLMQ_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lb_, fp8_type(g.a_e5m2), g.K, g.M, g.K));
    LLMQ_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&ld_, CUDA_R_16BF, g.N, g.M, g.N));
    cublasLtMatmulPreference_t pref = nullptr;
    LLMQ_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const std::uint64_t ws = workspace;
    LLMQ_CUBLAS_CHECK(
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    algos.resize(8);
    int found = 0;
    const cublasStatus_t status =
        cublasLtMatmulAlgoGetHeuristic(handle, op_, la_, lb_, ld_, ld_, pref, 8, algos.data(), &found);
    cublasLtMatmulPreferenceDestroy(pref);
    algos.resize(status == CUBLAS_STATUS_SUCCESS ? found : 0);
  }
  ~Plan() {
    cublasLtMatrixLayoutDestroy(ld_);
    cublasLtMatrixLayoutDestroy(lb_);
    cublasLtMatrixLayoutDestroy(la_);
    cublasLtMatmulDescDestroy(op_);
  }
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;

  cublasStatus_t run(cublasLtHandle_t handle, int algo, void* out, const void* a, const void* b, void* workspace,
                     std::size_t workspace_bytes, cudaStream_t stream) const {
    const float alpha = 1.f, beta = 0.f;
    return cublasLtMatmul(handle, op_, &alpha, b, la_, a, lb_, &beta, out, ld_, out, ld_, &algos[algo].algo, workspace,
                          workspace_bytes, stream);
  }

  std::vector<cublasLtMatmulHeuristicResult_t> algos;

 private:
  template <typename V>
  void set(cublasLtMatmulDescAttributes_t attr, const V& value) {
    LLMQ_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op_, attr, &value, sizeof(value)));
  }
  cublasLtMatmulDesc_t op_ = nullptr;
  cublasLtMatrixLayout_t la_ = nullptr, lb_ = nullptr, ld_ = nullptr;
};

template <typename T>
T* device_copy(const std::vector<T>& host) {
  T* d = nullptr;
  LLMQ_CUDA_CHECK(cudaMalloc(&d, host.size() * sizeof(T)));
  LLMQ_CUDA_CHECK(cudaMemcpy(d, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

struct Context {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  std::size_t workspace_bytes = std::size_t{32} << 20;
  cudaStream_t stream = nullptr;
};

// ---- part 1: which layout cuBLASLt reads --------------------------------------------------------

// FP8 values of a [rows, k] operand (as bytes, and their exact values).
struct Fp8Matrix {
  std::vector<std::uint8_t> bytes;
  std::vector<float> values;
};

Fp8Matrix random_fp8(int rows, int k, bool e5m2, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-2.f, 2.f);
  Fp8Matrix m;
  m.bytes.resize(static_cast<std::size_t>(rows) * k);
  m.values.resize(m.bytes.size());
  for (std::size_t i = 0; i < m.bytes.size(); ++i) {
    const float v = dist(rng);
    if (e5m2) {
      const __nv_fp8_e5m2 q(v);
      m.bytes[i] = q.__x;
      m.values[i] = static_cast<float>(q);
    } else {
      const __nv_fp8_e4m3 q(v);
      m.bytes[i] = q.__x;
      m.values[i] = static_cast<float>(q);
    }
  }
  return m;
}

// A random power of two (2^-3 .. 2^3) for every float of a scale buffer.
std::vector<float> power_of_two_scales(std::size_t n, std::mt19937& rng) {
  std::uniform_int_distribution<int> exponent(-3, 3);
  std::vector<float> s(n);
  for (float& v : s) v = std::ldexp(1.f, exponent(rng));
  return s;
}

double relative_l2(const std::vector<float>& got, const std::vector<double>& want) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

std::vector<double> cpu_product(const Gemm& g, const Fp8Matrix& a, const std::vector<float>& sa, const Layout& la,
                                const Fp8Matrix& b, const std::vector<float>& sb, const Layout& lb) {
  std::vector<double> out(static_cast<std::size_t>(g.M) * g.N);
  std::vector<double> bs(static_cast<std::size_t>(g.N) * g.K);  // b with its scales applied
  for (int n = 0; n < g.N; ++n)
    for (int k = 0; k < g.K; ++k)
      bs[static_cast<std::size_t>(n) * g.K + k] =
          b.values[static_cast<std::size_t>(n) * g.K + k] * sb[scale_index(g.b_mode, lb, n, k)];
  std::vector<double> row(g.K);
  for (int m = 0; m < g.M; ++m) {
    for (int k = 0; k < g.K; ++k)
      row[k] = a.values[static_cast<std::size_t>(m) * g.K + k] * sa[scale_index(g.a_mode, la, m, k)];
    for (int n = 0; n < g.N; ++n) {
      double acc = 0;
      const double* bn = &bs[static_cast<std::size_t>(n) * g.K];
      for (int k = 0; k < g.K; ++k) acc += row[k] * bn[k];
      out[static_cast<std::size_t>(m) * g.N + n] = acc;
    }
  }
  return out;
}

void probe_layout(Context& ctx, Mode a_mode, Mode b_mode, bool a_e5m2) {
  // Sizes that tell the layouts apart: 3 row blocks of a, 2 of b, 5 K blocks (not multiples of 4).
  const Gemm g{.M = 384, .N = 256, .K = 640, .a_e5m2 = a_e5m2, .a_mode = a_mode, .b_mode = b_mode};
  std::mt19937 rng(1234);
  const Fp8Matrix a = random_fp8(g.M, g.K, a_e5m2, rng), b = random_fp8(g.N, g.K, false, rng);
  const std::vector<float> sa = power_of_two_scales(scale_count(g.M, g.K), rng);
  const std::vector<float> sb = power_of_two_scales(scale_count(g.N, g.K), rng);
  std::uint8_t* da = device_copy(a.bytes);
  std::uint8_t* db = device_copy(b.bytes);
  float* dsa = device_copy(sa);
  float* dsb = device_copy(sb);
  nv_bfloat16* dout = nullptr;
  LLMQ_CUDA_CHECK(cudaMalloc(&dout, sizeof(nv_bfloat16) * g.M * g.N));
  const std::string pair = fmt::format("a {} {} x b {} e4m3", mode_name(a_mode), a_e5m2 ? "e5m2" : "e4m3",
                                       mode_name(b_mode));
  {
    Plan plan(ctx.handle, g, dsa, dsb, ctx.workspace_bytes);
    if (plan.algos.empty()) {
      fmt::print("layout | {} | no algorithm\n", pair);
    } else if (plan.run(ctx.handle, 0, dout, da, db, ctx.workspace, ctx.workspace_bytes, ctx.stream) !=
               CUBLAS_STATUS_SUCCESS) {
      fmt::print("layout | {} | the heuristic's first algorithm failed to run\n", pair);
    } else {
      std::vector<nv_bfloat16> raw(static_cast<std::size_t>(g.M) * g.N);
      LLMQ_CUDA_CHECK(cudaMemcpyAsync(raw.data(), dout, raw.size() * sizeof(nv_bfloat16), cudaMemcpyDeviceToHost,
                                      ctx.stream));
      LLMQ_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
      std::vector<float> got(raw.size());
      for (std::size_t i = 0; i < raw.size(); ++i) got[i] = __bfloat162float(raw[i]);
      std::string matched;
      double best = 1e30;
      for (const Layout& la : candidate_layouts(a_mode, g.M, g.K))
        for (const Layout& lb : candidate_layouts(b_mode, g.N, g.K)) {
          const double err = relative_l2(got, cpu_product(g, a, sa, la, b, sb, lb));
          best = std::min(best, err);
          if (err < 5e-3) matched += fmt::format("{}a {}, b {} (rel L2 {:.1e})", matched.empty() ? "" : "; ", la.name,
                                                 lb.name, err);
        }
      fmt::print("layout | {} | {}\n", pair,
                 matched.empty() ? fmt::format("no match (best rel L2 {:.2e})", best) : matched);
    }
  }
  for (void* p : {static_cast<void*>(da), static_cast<void*>(db), static_cast<void*>(dsa), static_cast<void*>(dsb),
                  static_cast<void*>(dout)})
    LLMQ_CUDA_CHECK(cudaFree(p));
}

// ---- part 2: speed at the Qwen2.5 shapes ----------------------------------------------------------

struct Shape {
  std::string name;
  int M, N, K;
  bool gradient;      // a is a gradient (e5m2 in the per-tensor recipe)
  bool bias = false;  // also timed with the bias epilogue
};

std::vector<Shape> qwen_shapes(const std::string& model, int tokens, int C, int qkv, int D) {
  return {
      {model + " qkv fwd", tokens, qkv, C, false, true},
      {model + " att-out fwd", tokens, C, C, false},
      {model + " gate-up fwd", tokens, 2 * D, C, false},
      {model + " down fwd", tokens, C, D, false},
      {model + " qkv dgrad", tokens, C, qkv, true},
      {model + " att-out dgrad", tokens, C, C, true},
      {model + " gate-up dgrad", tokens, C, 2 * D, true},
      {model + " down dgrad", tokens, D, C, true},
      {model + " qkv wgrad", qkv, C, tokens, true},
      {model + " att-out wgrad", C, C, tokens, true},
      {model + " gate-up wgrad", 2 * D, C, tokens, true},
      {model + " down wgrad", C, D, tokens, true},
  };
}

// Milliseconds per call of `algo` (kRuns calls after one warm-up), or -1 if it fails.
float time_algo(Context& ctx, const Plan& plan, int algo, void* out, const void* a, const void* b) {
  constexpr int kRuns = 10;
  if (plan.run(ctx.handle, algo, out, a, b, ctx.workspace, ctx.workspace_bytes, ctx.stream) != CUBLAS_STATUS_SUCCESS)
    return -1.f;
  cudaEvent_t start, stop;
  LLMQ_CUDA_CHECK(cudaEventCreate(&start));
  LLMQ_CUDA_CHECK(cudaEventCreate(&stop));
  LLMQ_CUDA_CHECK(cudaEventRecord(start, ctx.stream));
  for (int i = 0; i < kRuns; ++i)
    LLMQ_CUBLAS_CHECK(plan.run(ctx.handle, algo, out, a, b, ctx.workspace, ctx.workspace_bytes, ctx.stream));
  LLMQ_CUDA_CHECK(cudaEventRecord(stop, ctx.stream));
  LLMQ_CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0;
  LLMQ_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  LLMQ_CUDA_CHECK(cudaEventDestroy(start));
  LLMQ_CUDA_CHECK(cudaEventDestroy(stop));
  return ms / kRuns;
}

struct Variant {
  Mode a_mode, b_mode;
  bool a_e5m2;
  bool bias = false;
};

void probe_speed(Context& ctx, const Shape& s) {
  std::vector<Variant> variants = {{Mode::Scalar, Mode::Scalar, false}, {Mode::Outer, Mode::Outer, false},
                                   {Mode::Vec128, Mode::Blk128, false}, {Mode::Vec128, Mode::Vec128, false}};
  if (s.gradient) variants.push_back({Mode::Scalar, Mode::Scalar, true});
  if (s.bias) {
    variants.push_back({Mode::Scalar, Mode::Scalar, false, true});
    variants.push_back({Mode::Vec128, Mode::Blk128, false, true});
  }
  const std::size_t a_bytes = static_cast<std::size_t>(s.M) * s.K, b_bytes = static_cast<std::size_t>(s.N) * s.K;
  void *a = nullptr, *b = nullptr, *out = nullptr;
  float *sa = nullptr, *sb = nullptr;
  LLMQ_CUDA_CHECK(cudaMalloc(&a, a_bytes));
  LLMQ_CUDA_CHECK(cudaMalloc(&b, b_bytes));
  LLMQ_CUDA_CHECK(cudaMalloc(&out, sizeof(nv_bfloat16) * s.M * s.N));
  void* bias = nullptr;
  LLMQ_CUDA_CHECK(cudaMalloc(&bias, sizeof(nv_bfloat16) * s.N));
  LLMQ_CUDA_CHECK(cudaMemset(bias, 0, sizeof(nv_bfloat16) * s.N));
  const std::size_t n_scales = std::max(scale_count(s.M, s.K), scale_count(s.N, s.K));
  LLMQ_CUDA_CHECK(cudaMalloc(&sa, n_scales * sizeof(float)));
  LLMQ_CUDA_CHECK(cudaMalloc(&sb, n_scales * sizeof(float)));
  // Small e4m3 values (0x30 = 0.5) and unit scales: the timing does not depend on the values.
  LLMQ_CUDA_CHECK(cudaMemset(a, 0x30, a_bytes));
  LLMQ_CUDA_CHECK(cudaMemset(b, 0x30, b_bytes));
  const std::vector<float> ones(n_scales, 1.f);
  LLMQ_CUDA_CHECK(cudaMemcpy(sa, ones.data(), n_scales * sizeof(float), cudaMemcpyHostToDevice));
  LLMQ_CUDA_CHECK(cudaMemcpy(sb, ones.data(), n_scales * sizeof(float), cudaMemcpyHostToDevice));

  std::vector<std::unique_ptr<Plan>> plans;
  std::vector<int> best_algo(variants.size(), -1);
  for (std::size_t v = 0; v < variants.size(); ++v) {
    const Gemm g{s.M, s.N, s.K, variants[v].a_e5m2, variants[v].a_mode, variants[v].b_mode,
                 variants[v].bias ? bias : nullptr};
    plans.push_back(std::make_unique<Plan>(ctx.handle, g, sa, sb, ctx.workspace_bytes));
    float best = -1;
    for (int i = 0; i < static_cast<int>(plans[v]->algos.size()); ++i) {
      const float ms = time_algo(ctx, *plans[v], i, out, a, b);
      if (ms > 0 && (best < 0 || ms < best)) best = ms, best_algo[v] = i;
    }
  }
  std::vector<float> ms(variants.size(), -1.f);
  for (int round = 0; round < 3; ++round)
    for (std::size_t v = 0; v < variants.size(); ++v) {
      if (best_algo[v] < 0) continue;
      const float t = time_algo(ctx, *plans[v], best_algo[v], out, a, b);
      if (t > 0 && (ms[v] < 0 || t < ms[v])) ms[v] = t;
    }
  const double flop = 2.0 * s.M * s.N * s.K;
  for (std::size_t v = 0; v < variants.size(); ++v) {
    const std::string what = fmt::format("{} x {}{}{}", mode_name(variants[v].a_mode), mode_name(variants[v].b_mode),
                                         variants[v].a_e5m2 ? " (a e5m2)" : "", variants[v].bias ? " + bias" : "");
    if (ms[v] < 0) {
      fmt::print("speed | {} | {}x{}x{} | {} | no algorithm ({} candidates)\n", s.name, s.M, s.N, s.K, what,
                 plans[v]->algos.size());
      continue;
    }
    fmt::print("speed | {} | {}x{}x{} | {} | {:.1f} us | {:.0f} TFLOP/s | {:.3f} of scalar\n", s.name, s.M, s.N, s.K,
               what, ms[v] * 1e3, flop / (ms[v] * 1e-3) / 1e12, ms[0] > 0 ? ms[v] / ms[0] : 0.0);
  }
  plans.clear();
  for (void* p : {a, b, out, bias, static_cast<void*>(sa), static_cast<void*>(sb)}) LLMQ_CUDA_CHECK(cudaFree(p));
}

}  // namespace

int main() {
  try {
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
      fmt::print(stderr, "fp8_scaling_probe: no CUDA device\n");
      return 1;
    }
    cudaDeviceProp prop{};
    LLMQ_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    fmt::print("device: {} ({} SMs), cuBLASLt {}\n", prop.name, prop.multiProcessorCount, cublasLtGetVersion());
    Context ctx;
    LLMQ_CUBLAS_CHECK(cublasLtCreate(&ctx.handle));
    LLMQ_CUDA_CHECK(cudaMalloc(&ctx.workspace, ctx.workspace_bytes));
    LLMQ_CUDA_CHECK(cudaStreamCreate(&ctx.stream));

    const std::vector<std::pair<Mode, Mode>> pairs = {{Mode::Scalar, Mode::Scalar}, {Mode::Outer, Mode::Outer},
                                                      {Mode::Vec128, Mode::Blk128}, {Mode::Vec128, Mode::Vec128},
                                                      {Mode::Blk128, Mode::Vec128}, {Mode::Blk128, Mode::Blk128}};
    for (const auto& [a_mode, b_mode] : pairs)
      for (bool a_e5m2 : {false, true}) probe_layout(ctx, a_mode, b_mode, a_e5m2);

    std::vector<Shape> shapes = qwen_shapes("0.5B", 16384, 896, 1152, 4864);
    for (const Shape& s : qwen_shapes("7B", 2048, 3584, 4608, 18944)) shapes.push_back(s);
    for (const Shape& s : shapes) probe_speed(ctx, s);

    LLMQ_CUDA_CHECK(cudaStreamDestroy(ctx.stream));
    LLMQ_CUDA_CHECK(cudaFree(ctx.workspace));
    cublasLtDestroy(ctx.handle);
  } catch (const std::exception& e) {
    fmt::print(stderr, "fp8_scaling_probe: {}\n", e.what());
    return 1;
  }
  return 0;
}
