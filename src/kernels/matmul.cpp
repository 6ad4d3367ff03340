// cuBLASLt matrix multiplies (see matmul.h for the math and conventions).
//
// cuBLASLt is column-major. A row-major matrix X[R, C] is, in memory, the column-major matrix
// X^T[C, R] with leading dimension C. So the row-major product out = op(a) @ op(b) is computed as
// the column-major product out^T[N, M] = op(b)^T[N, K] @ op(a)^T[K, M]: cuBLASLt's "A" is our b,
// its "B" is our a, with the same transpose flags, and the bias (one value per column-major row
// of out^T, i.e. per row-major column of out) has N elements.
//
// FP8: cuBLASLt's FP8 kernels on Hopper only take "TN" (its A transposed, its B not), i.e. both
// operands K-major. In our terms that is out = a[M, K] @ b[N, K]^T (trans_a = false, trans_b = true):
// cuBLASLt's A is b stored as column-major [K, N] used transposed, its B is a stored as column-major
// [K, M]. Its A scale is therefore b's scale_inv and its B scale a's: D = scale_A * scale_B * (A^T B).
#include "kernels/matmul.h"

#include <cublasLt.h>

#include <cstdint>
#include <map>
#include <unordered_map>
#include <vector>

#include "core/errors.h"

namespace llmq::kernels {

namespace {

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::FP32: return CUDA_R_32F;
    case DType::BF16: return CUDA_R_16BF;
    case DType::E4M3: return CUDA_R_8F_E4M3;
    case DType::E5M2: return CUDA_R_8F_E5M2;
    default: break;
  }
  throw Error(fmt::format("matmul: dtype {} is not supported (use fp32, bf16, e4m3 or e5m2)", dtype_name(t)));
}

// Largest power of two (capped at 256, cuBLASLt's default requirement) dividing the address.
std::uint32_t pointer_alignment(const void* p) {
  auto address = reinterpret_cast<std::uintptr_t>(p);
  std::uint32_t alignment = 256;
  while (alignment > 1 && address % alignment != 0) alignment /= 2;
  return alignment;
}

// Everything the algorithm choice depends on.
struct ProblemKey {
  int M, N, K;
  bool trans_a, trans_b, has_bias;
  bool fast_accum;  // FP8 only
  DType a_dtype, b_dtype, out_dtype, bias_dtype;
  Fp8Scaling a_scaling = Fp8Scaling::Tensor, b_scaling = Fp8Scaling::Tensor;  // FP8 only
  std::uint32_t align_a, align_b, align_out, align_bias;

  bool is_fp8() const { return is_float8(a_dtype); }
  bool operator==(const ProblemKey&) const = default;
};

struct ProblemKeyHash {
  std::size_t operator()(const ProblemKey& k) const {
    std::size_t h = 1469598103934665603ull;
    auto mix = [&h](std::uint64_t v) { h = (h ^ v) * 1099511628211ull; };
    mix(static_cast<std::uint32_t>(k.M));
    mix(static_cast<std::uint32_t>(k.N));
    mix(static_cast<std::uint32_t>(k.K));
    mix(k.trans_a | (k.trans_b << 1) | (k.has_bias << 2) | (k.fast_accum << 3));
    mix(static_cast<std::uint64_t>(k.a_dtype) << 24 | static_cast<std::uint64_t>(k.b_dtype) << 16 |
        static_cast<std::uint64_t>(k.out_dtype) << 8 | static_cast<std::uint64_t>(k.bias_dtype));
    mix(k.align_a | static_cast<std::uint64_t>(k.align_b) << 16 | static_cast<std::uint64_t>(k.align_out) << 32 |
        static_cast<std::uint64_t>(k.align_bias) << 48);
    mix(static_cast<std::uint64_t>(k.a_scaling) << 8 | static_cast<std::uint64_t>(k.b_scaling));
    return h;
  }
};

const char* scaling_name(Fp8Scaling s) {
  switch (s) {
    case Fp8Scaling::Tensor: return "tensor";
    case Fp8Scaling::Block1x128: return "1x128";
    case Fp8Scaling::Block128x128: return "128x128";
  }
  return "?";
}

// Also the key of the algorithm choices saved in checkpoints: per-tensor problems keep the text
// they had before block scaling existed.
std::string describe(const ProblemKey& k) {
  const bool blocks = k.a_scaling != Fp8Scaling::Tensor || k.b_scaling != Fp8Scaling::Tensor;
  return fmt::format(
      "M={} N={} K={} (a {}, b {}, {} output, trans_a={}, trans_b={}, bias={}{}{}; pointer alignment a={} B, b={} B, "
      "out={} B, bias={} B)",
      k.M, k.N, k.K, dtype_name(k.a_dtype), dtype_name(k.b_dtype), dtype_name(k.out_dtype), k.trans_a, k.trans_b,
      k.has_bias, k.is_fp8() ? fmt::format(", fast_accum={}", k.fast_accum) : "",
      blocks ? fmt::format(", scaling a={} b={}", scaling_name(k.a_scaling), scaling_name(k.b_scaling)) : "",
      k.align_a, k.align_b, k.align_out, k.align_bias);
}

std::int32_t cublaslt_scale_mode(Fp8Scaling s) {
  switch (s) {
    case Fp8Scaling::Tensor: return CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F;
    case Fp8Scaling::Block1x128: return CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
    case Fp8Scaling::Block128x128: return CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
  }
  return CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F;
}

// The device pointers of one call (the scales only for FP8).
struct MatmulOperands {
  void* out;
  const void* a;
  const void* b;
  const void* bias;
  const float* a_scale_inv = nullptr;
  const float* b_scale_inv = nullptr;
};

// Descriptors and chosen algorithm of one problem; owns the cuBLASLt descriptors.
class MatmulPlan {
 public:
  MatmulPlan(cublasLtHandle_t handle, const ProblemKey& key, const MatmulOperands& ops, std::size_t workspace_bytes)
      : fp8_(key.is_fp8()) {
    try {
      create_descriptors(key, ops);
      choose_algorithm(handle, key, workspace_bytes);
    } catch (...) {
      destroy();
      throw;
    }
  }
  ~MatmulPlan() { destroy(); }
  MatmulPlan(const MatmulPlan&) = delete;
  MatmulPlan& operator=(const MatmulPlan&) = delete;

  void run(cublasLtHandle_t handle, const MatmulOperands& ops, float alpha, bool accumulate, void* workspace,
           std::size_t workspace_bytes, cudaStream_t stream) {
    bind_pointers(ops);
    const float beta = accumulate ? 1.f : 0.f;
    LLMQ_CUBLAS_CHECK(launch(handle, ops, alpha, beta, candidates_[chosen_].algo, workspace, workspace_bytes, stream));
  }

  // Takes the heuristic's candidate `index` (0 = its first choice); false if it has no such candidate.
  bool choose(int index) {
    if (index < 0 || index >= static_cast<int>(candidates_.size())) return false;
    chosen_ = index;
    return true;
  }
  int chosen() const { return chosen_; }

  // Times the heuristic's candidates on this call's operands and keeps the fastest. An accumulating
  // call's output is saved first and restored after (one that overwrites needs no saving), so the
  // call that follows computes exactly what it would have. Keeps the heuristic's choice when the
  // saved copy does not fit in free device memory.
  void tune(cublasLtHandle_t handle, const ProblemKey& key, const MatmulOperands& ops, float alpha, bool accumulate,
            void* workspace, std::size_t workspace_bytes, cudaStream_t stream) {
    if (candidates_.size() < 2) return;
    const std::size_t out_bytes = static_cast<std::size_t>(key.M) * key.N * dtype_size(key.out_dtype);
    ScratchCopy saved;
    if (accumulate && cudaMalloc(&saved.data, out_bytes) != cudaSuccess) {
      (void)cudaGetLastError();  // no room: the heuristic's choice stands
      return;
    }
    if (saved.data) LLMQ_CUDA_CHECK(cudaMemcpyAsync(saved.data, ops.out, out_bytes, cudaMemcpyDeviceToDevice, stream));
    bind_pointers(ops);
    const std::vector<float> ms = time_candidates(handle, ops, alpha, accumulate ? 1.f : 0.f, workspace,
                                                  workspace_bytes, stream);
    if (saved.data) LLMQ_CUDA_CHECK(cudaMemcpyAsync(ops.out, saved.data, out_bytes, cudaMemcpyDeviceToDevice, stream));
    LLMQ_CUDA_CHECK(cudaStreamSynchronize(stream));  // before the copy is freed
    int best = 0;
    for (int i = 1; i < static_cast<int>(ms.size()); ++i)
      if (ms[i] >= 0 && (ms[best] < 0 || ms[i] < ms[best])) best = i;
    choose(best);
  }

 private:
  static constexpr int kMaxCandidates = 8;  // candidates timed by tune() (16 measured no faster)
  static constexpr int kTimedRuns = 5;
  bool fp8_;
  std::vector<cublasLtMatmulHeuristicResult_t> candidates_;  // the heuristic's ranking, best first
  int chosen_ = 0;                                            // index into candidates_ of the algorithm run
  cublasLtMatmulDesc_t op_ = nullptr;
  cublasLtMatrixLayout_t layout_a_ = nullptr, layout_b_ = nullptr, layout_out_ = nullptr;

  // The pointers the descriptor holds besides the operands: the bias and (FP8) the scales.
  void bind_pointers(const MatmulOperands& ops) {
    if (ops.bias) set_attribute(CUBLASLT_MATMUL_DESC_BIAS_POINTER, ops.bias);
    if (fp8_) set_scale_pointers(ops);
  }

  cublasStatus_t launch(cublasLtHandle_t handle, const MatmulOperands& ops, float alpha, float beta,
                        const cublasLtMatmulAlgo_t& algo, void* workspace, std::size_t workspace_bytes,
                        cudaStream_t stream) {
    // cuBLASLt's A is our b and its B is our a (see the head comment); C = D = out.
    return cublasLtMatmul(handle, op_, &alpha, ops.b, layout_a_, ops.a, layout_b_, &beta, ops.out, layout_out_,
                          ops.out, layout_out_, &algo, workspace, workspace_bytes, stream);
  }

  // A device buffer and two events that are released however tune() is left.
  struct ScratchCopy {
    void* data = nullptr;
    ~ScratchCopy() {
      if (data) cudaFree(data);
    }
  };
  struct EventPair {
    cudaEvent_t start = nullptr, stop = nullptr;
    EventPair() {
      LLMQ_CUDA_CHECK(cudaEventCreate(&start));
      LLMQ_CUDA_CHECK(cudaEventCreate(&stop));
    }
    ~EventPair() {
      cudaEventDestroy(start);
      cudaEventDestroy(stop);
    }
  };

  // Milliseconds for kTimedRuns calls of each candidate (after one warm-up call); -1 where it fails.
  std::vector<float> time_candidates(cublasLtHandle_t handle, const MatmulOperands& ops, float alpha, float beta,
                                     void* workspace, std::size_t workspace_bytes, cudaStream_t stream) {
    std::vector<float> ms(candidates_.size(), -1.f);
    EventPair events;
    for (std::size_t i = 0; i < candidates_.size(); ++i) {
      const cublasLtMatmulAlgo_t& algo = candidates_[i].algo;
      if (launch(handle, ops, alpha, beta, algo, workspace, workspace_bytes, stream) != CUBLAS_STATUS_SUCCESS) continue;
      LLMQ_CUDA_CHECK(cudaEventRecord(events.start, stream));
      for (int run = 0; run < kTimedRuns; ++run)
        LLMQ_CUBLAS_CHECK(launch(handle, ops, alpha, beta, algo, workspace, workspace_bytes, stream));
      LLMQ_CUDA_CHECK(cudaEventRecord(events.stop, stream));
      LLMQ_CUDA_CHECK(cudaEventSynchronize(events.stop));
      LLMQ_CUDA_CHECK(cudaEventElapsedTime(&ms[i], events.start, events.stop));
    }
    return ms;
  }

  template <typename V>
  void set_attribute(cublasLtMatmulDescAttributes_t attr, const V& value) {
    LLMQ_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op_, attr, &value, sizeof(value)));
  }

  // cuBLASLt's A is our b, so its A scale is b's (see the head comment).
  void set_scale_pointers(const MatmulOperands& ops) {
    set_attribute(CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, ops.b_scale_inv);
    set_attribute(CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, ops.a_scale_inv);
  }

  void create_descriptors(const ProblemKey& k, const MatmulOperands& ops) {
    LLMQ_CUBLAS_CHECK(cublasLtMatmulDescCreate(&op_, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t op_b = k.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLASLt's transa
    const cublasOperation_t op_a = k.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLASLt's transb
    set_attribute(CUBLASLT_MATMUL_DESC_TRANSA, op_b);
    set_attribute(CUBLASLT_MATMUL_DESC_TRANSB, op_a);
    if (k.has_bias) {
      set_attribute(CUBLASLT_MATMUL_DESC_EPILOGUE, CUBLASLT_EPILOGUE_BIAS);
      set_attribute(CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, static_cast<std::int32_t>(cuda_type(k.bias_dtype)));
      set_attribute(CUBLASLT_MATMUL_DESC_BIAS_POINTER, ops.bias);  // the heuristic derives the bias alignment from it
    }
    if (fp8_) {
      set_attribute(CUBLASLT_MATMUL_DESC_FAST_ACCUM, static_cast<std::int8_t>(k.fast_accum));
      if (k.b_scaling != Fp8Scaling::Tensor)  // cuBLASLt's A is our b
        set_attribute(CUBLASLT_MATMUL_DESC_A_SCALE_MODE, cublaslt_scale_mode(k.b_scaling));
      if (k.a_scaling != Fp8Scaling::Tensor)
        set_attribute(CUBLASLT_MATMUL_DESC_B_SCALE_MODE, cublaslt_scale_mode(k.a_scaling));
      set_scale_pointers(ops);
    }
    create_layouts(k);
  }

  void create_layouts(const ProblemKey& k) {
    // Stored (untransposed) column-major shapes: row-major b is [K, N] (or [N, K] when trans_b),
    // i.e. column-major [N, K] with ld N (or [K, N] with ld K); likewise for a.
    const cudaDataType_t type_a = cuda_type(k.a_dtype), type_b = cuda_type(k.b_dtype), out = cuda_type(k.out_dtype);
    if (k.trans_b)
      LLMQ_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout_a_, type_b, k.K, k.N, k.K));
    else
      LLMQ_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout_a_, type_b, k.N, k.K, k.N));
    if (k.trans_a)
      LLMQ_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout_b_, type_a, k.M, k.K, k.M));
    else
      LLMQ_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout_b_, type_a, k.K, k.M, k.K));
    LLMQ_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout_out_, out, k.N, k.M, k.N));
  }

  void choose_algorithm(cublasLtHandle_t handle, const ProblemKey& k, std::size_t workspace_bytes) {
    cublasLtMatmulPreference_t pref = nullptr;
    LLMQ_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    int found = 0;
    cublasStatus_t status = CUBLAS_STATUS_SUCCESS;
    try {
      const std::uint64_t max_workspace = workspace_bytes;
      set_preference(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, max_workspace);
      set_preference(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, k.align_b);  // cuBLASLt's A is our b
      set_preference(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, k.align_a);
      set_preference(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, k.align_out);
      set_preference(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, k.align_out);
      candidates_.resize(kMaxCandidates);
      status = cublasLtMatmulAlgoGetHeuristic(handle, op_, layout_a_, layout_b_, layout_out_, layout_out_, pref,
                                              kMaxCandidates, candidates_.data(), &found);
      candidates_.resize(status == CUBLAS_STATUS_SUCCESS ? found : 0);
    } catch (...) {
      cublasLtMatmulPreferenceDestroy(pref);
      throw;
    }
    cublasLtMatmulPreferenceDestroy(pref);
    const char* rule = k.is_fp8() ? "FP8 matmuls need a GPU with FP8 tensor cores (compute capability 8.9 or newer), "
                                    "K and N multiples of 16 and buffers aligned to 16 bytes: pad the dimensions or "
                                    "use bf16"
                                  : "bf16 matmuls need K and N (and M when trans_a) to be multiples of 8 on some GPUs "
                                    "and buffers aligned to 16 bytes: pad the dimensions or use fp32";
    LLMQ_REQUIRE(!candidates_.empty() && candidates_.front().state == CUBLAS_STATUS_SUCCESS,
                 "matmul {}: cuBLASLt has no algorithm for this problem (heuristic status {}, {} found). {}",
                 describe(k), static_cast<int>(status), found, rule);
  }

  template <typename V>
  static void set_preference(cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attr, V value) {
    LLMQ_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof(value)));
  }

  void destroy() {
    if (layout_out_) cublasLtMatrixLayoutDestroy(layout_out_);
    if (layout_b_) cublasLtMatrixLayoutDestroy(layout_b_);
    if (layout_a_) cublasLtMatrixLayoutDestroy(layout_a_);
    if (op_) cublasLtMatmulDescDestroy(op_);
    layout_out_ = layout_b_ = layout_a_ = nullptr;
    op_ = nullptr;
  }
};

}  // namespace

struct MatmulContext::Impl {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  std::size_t workspace_bytes = 0;
  std::unordered_map<ProblemKey, std::unique_ptr<MatmulPlan>, ProblemKeyHash> plans;
  bool autotune = false;
  std::map<std::string, int> presets;  // describe(key) -> candidate index, from preset_choices
};

MatmulContext::MatmulContext(void* workspace, std::size_t workspace_bytes) : impl_(std::make_unique<Impl>()) {
  LLMQ_REQUIRE(workspace != nullptr || workspace_bytes == 0,
               "MatmulContext: workspace of {} bytes requested but the pointer is null", workspace_bytes);
  LLMQ_REQUIRE(pointer_alignment(workspace) >= 256 || workspace == nullptr,
               "MatmulContext: the workspace must be 256-byte aligned (allocate it through llmq::Allocator)");
  impl_->workspace = workspace;
  impl_->workspace_bytes = workspace_bytes;
  LLMQ_CUBLAS_CHECK(cublasLtCreate(&impl_->handle));
}

MatmulContext::~MatmulContext() {
  impl_->plans.clear();  // descriptors before the handle
  if (impl_->handle) cublasLtDestroy(impl_->handle);
}

std::size_t MatmulContext::cached_problems() const { return impl_->plans.size(); }

void MatmulContext::set_autotune(bool on) { impl_->autotune = on; }

std::map<std::string, int> MatmulContext::choices() const {
  std::map<std::string, int> out;
  for (const auto& [key, plan] : impl_->plans) out[describe(key)] = plan->chosen();
  return out;
}

void MatmulContext::preset_choices(const std::map<std::string, int>& choices) {
  impl_->presets = choices;
  for (auto& [key, plan] : impl_->plans)
    if (const auto it = choices.find(describe(key)); it != choices.end()) plan->choose(it->second);
}

std::string MatmulContext::environment() {
  int device = 0;
  LLMQ_CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp prop{};
  LLMQ_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return fmt::format("{}, {} SMs, cuBLASLt {}", prop.name, prop.multiProcessorCount, cublasLtGetVersion());
}

namespace {

// Runs one problem with its cached plan, creating the plan (and choosing the algorithm) on first use:
// a preset choice, else with autotune the fastest candidate (never while a graph is being captured:
// timing needs synchronization), else the heuristic's first.
void run_planned(MatmulContext::Impl& impl, const ProblemKey& key, const MatmulOperands& ops, float alpha,
                 bool accumulate, cudaStream_t stream) {
  auto it = impl.plans.find(key);
  if (it == impl.plans.end()) {
    it = impl.plans.emplace(key, std::make_unique<MatmulPlan>(impl.handle, key, ops, impl.workspace_bytes)).first;
    MatmulPlan& plan = *it->second;
    const auto preset = impl.presets.find(describe(key));
    const bool preset_taken = preset != impl.presets.end() && plan.choose(preset->second);
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    LLMQ_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
    if (!preset_taken && impl.autotune && capture == cudaStreamCaptureStatusNone)
      plan.tune(impl.handle, key, ops, alpha, accumulate, impl.workspace, impl.workspace_bytes, stream);
  }
  it->second->run(impl.handle, ops, alpha, accumulate, impl.workspace, impl.workspace_bytes, stream);
}

}  // namespace

void matmul(MatmulContext& ctx, void* out, DType out_dtype, const void* a, const void* b, DType in_dtype, int M, int N,
            int K, bool trans_a, bool trans_b, float alpha, bool accumulate, const void* bias, cudaStream_t stream) {
  LLMQ_REQUIRE(M > 0 && N > 0 && K > 0, "matmul: sizes must be positive, got M={} N={} K={}", M, N, K);
  LLMQ_REQUIRE(out && a && b, "matmul M={} N={} K={}: null pointer (out={}, a={}, b={})", M, N, K, out, a, b);
  const bool supported = (in_dtype == DType::FP32 && out_dtype == DType::FP32) ||
                         (in_dtype == DType::BF16 && (out_dtype == DType::BF16 || out_dtype == DType::FP32));
  LLMQ_REQUIRE(supported,
               "matmul: {} inputs with {} output is not supported (supported: fp32 -> fp32, bf16 -> bf16 or fp32)",
               dtype_name(in_dtype), dtype_name(out_dtype));

  const ProblemKey key{.M = M,
                       .N = N,
                       .K = K,
                       .trans_a = trans_a,
                       .trans_b = trans_b,
                       .has_bias = bias != nullptr,
                       .fast_accum = false,
                       .a_dtype = in_dtype,
                       .b_dtype = in_dtype,
                       .out_dtype = out_dtype,
                       .bias_dtype = out_dtype,
                       .align_a = pointer_alignment(a),
                       .align_b = pointer_alignment(b),
                       .align_out = pointer_alignment(out),
                       .align_bias = bias ? pointer_alignment(bias) : 256u};
  run_planned(*ctx.impl_, key, {.out = out, .a = a, .b = b, .bias = bias}, alpha, accumulate, stream);
}

namespace {

bool supported_fp8_pair(DType a, DType b) {
  return (a == DType::E4M3 && (b == DType::E4M3 || b == DType::E5M2)) || (a == DType::E5M2 && b == DType::E4M3);
}

void check_fp8_problem(void* out, DType out_dtype, const void* a, DType a_dtype, const float* a_scale_inv,
                       const void* b, DType b_dtype, const float* b_scale_inv, int M, int N, int K) {
  LLMQ_REQUIRE(M > 0 && N > 0 && K > 0, "matmul_fp8: sizes must be positive, got M={} N={} K={}", M, N, K);
  LLMQ_REQUIRE(out && a && b, "matmul_fp8 M={} N={} K={}: null pointer (out={}, a={}, b={})", M, N, K, out, a, b);
  LLMQ_REQUIRE(a_scale_inv && b_scale_inv,
               "matmul_fp8 M={} N={} K={}: null scale pointer (a_scale_inv={}, b_scale_inv={}); pass the scale_inv "
               "that quantize_fp8 wrote for each operand",
               M, N, K, static_cast<const void*>(a_scale_inv), static_cast<const void*>(b_scale_inv));
  LLMQ_REQUIRE(supported_fp8_pair(a_dtype, b_dtype),
               "matmul_fp8: {} x {} inputs are not supported; cuBLASLt has FP8 kernels for e4m3 x e4m3, e4m3 x e5m2 "
               "and e5m2 x e4m3 only (quantize at least one operand to e4m3)",
               dtype_name(a_dtype), dtype_name(b_dtype));
  LLMQ_REQUIRE(out_dtype == DType::BF16 || out_dtype == DType::FP32,
               "matmul_fp8: {} output is not supported (use bf16 or fp32)", dtype_name(out_dtype));
  LLMQ_REQUIRE(K % 16 == 0 && N % 16 == 0,
               "matmul_fp8 M={} N={} K={}: cuBLASLt's FP8 GEMMs need K and N to be multiples of 16 (so that every "
               "row of a, b and out starts 16-byte aligned); pad the dimensions or use the bf16 matmul",
               M, N, K);
  // Not in cuBLASLt's documentation, measured on an H100 with cuBLASLt 13.1: a scale pointer that is
  // only 4-byte aligned makes every FP8 algorithm fail with CUBLAS_STATUS_NOT_SUPPORTED.
  LLMQ_REQUIRE(pointer_alignment(a_scale_inv) >= 16 && pointer_alignment(b_scale_inv) >= 16,
               "matmul_fp8 M={} N={} K={}: the scale pointers must be 16-byte aligned (a_scale_inv={}, "
               "b_scale_inv={}); give each scale its own 16-byte slot", M, N, K,
               static_cast<const void*>(a_scale_inv), static_cast<const void*>(b_scale_inv));
  LLMQ_REQUIRE(pointer_alignment(a) >= 16 && pointer_alignment(b) >= 16 && pointer_alignment(out) >= 16,
               "matmul_fp8 M={} N={} K={}: a, b and out must be 16-byte aligned (a={}, b={}, out={}); allocate "
               "through llmq::Allocator and offset views by multiples of 16 bytes",
               M, N, K, a, b, out);
}

}  // namespace

void matmul_fp8(MatmulContext& ctx, void* out, DType out_dtype, const void* a, DType a_dtype, const float* a_scale_inv,
                const void* b, DType b_dtype, const float* b_scale_inv, int M, int N, int K, bool accumulate,
                const void* bias, bool fast_accum, cudaStream_t stream) {
  matmul_fp8(ctx, out, out_dtype, Fp8Operand{a, a_dtype, a_scale_inv}, Fp8Operand{b, b_dtype, b_scale_inv}, M, N, K,
             accumulate, bias, fast_accum, stream);
}

void matmul_fp8(MatmulContext& ctx, void* out, DType out_dtype, const Fp8Operand& a, const Fp8Operand& b, int M, int N,
                int K, bool accumulate, const void* bias, bool fast_accum, cudaStream_t stream) {
  check_fp8_problem(out, out_dtype, a.data, a.dtype, a.scale_inv, b.data, b.dtype, b.scale_inv, M, N, K);
  const bool blocks = a.scaling != Fp8Scaling::Tensor || b.scaling != Fp8Scaling::Tensor;
  LLMQ_REQUIRE(!(blocks && fast_accum),
               "matmul_fp8 M={} N={} K={}: block-scaled operands (a {}, b {}) need fast_accum off: their scales are "
               "applied when the partial sums are promoted", M, N, K, scaling_name(a.scaling), scaling_name(b.scaling));
  const ProblemKey key{.M = M,
                       .N = N,
                       .K = K,
                       .trans_a = false,  // a [M, K] and b [N, K]: both K-major, the "TN" of the head comment
                       .trans_b = true,
                       .has_bias = bias != nullptr,
                       .fast_accum = fast_accum,
                       .a_dtype = a.dtype,
                       .b_dtype = b.dtype,
                       .out_dtype = out_dtype,
                       .bias_dtype = DType::BF16,  // cuBLASLt's FP8 kernels: bf16 bias for bf16 and fp32 outputs
                       .a_scaling = a.scaling,
                       .b_scaling = b.scaling,
                       .align_a = pointer_alignment(a.data),
                       .align_b = pointer_alignment(b.data),
                       .align_out = pointer_alignment(out),
                       .align_bias = bias ? pointer_alignment(bias) : 256u};
  const MatmulOperands ops{
      .out = out, .a = a.data, .b = b.data, .bias = bias, .a_scale_inv = a.scale_inv, .b_scale_inv = b.scale_inv};
  run_planned(*ctx.impl_, key, ops, 1.f, accumulate, stream);
}

namespace {
int blocks_of_128(int n) { return (n + 127) / 128; }
int round_up_4(int n) { return (n + 3) / 4 * 4; }
}  // namespace

ScaleLayout fp8_scale_layout(Fp8Scaling scaling, int rows, int k) {
  switch (scaling) {
    case Fp8Scaling::Tensor: return {0, 0};
    case Fp8Scaling::Block1x128: return {1, round_up_4(rows)};
    case Fp8Scaling::Block128x128: return {round_up_4(blocks_of_128(k)), 1};
  }
  return {0, 0};
}

std::size_t fp8_scale_count(Fp8Scaling scaling, int rows, int k) {
  switch (scaling) {
    case Fp8Scaling::Tensor: return 1;
    case Fp8Scaling::Block1x128: return static_cast<std::size_t>(round_up_4(rows)) * blocks_of_128(k);
    case Fp8Scaling::Block128x128: return static_cast<std::size_t>(blocks_of_128(rows)) * round_up_4(blocks_of_128(k));
  }
  return 1;
}

namespace {
struct MatrixShape {
  std::int64_t rows, cols;
};
MatrixShape as_matrix(const Tensor& t) {
  const std::int64_t cols = t.rank > 0 ? t.size(-1) : 1;
  return {cols > 0 ? t.numel() / cols : 0, cols};
}
}  // namespace

void matmul(MatmulContext& ctx, const Tensor& out, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b,
            float alpha, bool accumulate, const Tensor& bias, cudaStream_t stream) {
  for (const Tensor* t : {&out, &a, &b}) {
    LLMQ_REQUIRE(!t->empty() && t->rank >= 1, "matmul: tensor {} has no data or no dimensions", t->describe());
    LLMQ_REQUIRE(t->location == Location::Device, "matmul: tensor {} must be on the device", t->describe());
  }
  LLMQ_REQUIRE(a.dtype == b.dtype, "matmul: inputs have different dtypes: a {} and b {}", a.describe(), b.describe());

  const MatrixShape ma = as_matrix(a), mb = as_matrix(b), mo = as_matrix(out);
  const std::int64_t M = trans_a ? ma.cols : ma.rows, K = trans_a ? ma.rows : ma.cols;
  const std::int64_t Kb = trans_b ? mb.cols : mb.rows, N = trans_b ? mb.rows : mb.cols;
  LLMQ_REQUIRE(K == Kb, "matmul: inner dimensions differ: op(a) is [{}, {}] (a {}, trans_a={}) but op(b) is [{}, {}] "
               "(b {}, trans_b={})", M, K, a.describe(), trans_a, Kb, N, b.describe(), trans_b);
  LLMQ_REQUIRE(mo.rows == M && mo.cols == N, "matmul: output {} should be [{}, {}] = op(a) @ op(b) (a {}, b {})",
               out.describe(), M, N, a.describe(), b.describe());
  constexpr std::int64_t kMaxDim = 0x7fffffff;
  LLMQ_REQUIRE(M <= kMaxDim && N <= kMaxDim && K <= kMaxDim, "matmul: dimensions M={} N={} K={} exceed the int range",
               M, N, K);
  if (!bias.empty()) {
    LLMQ_REQUIRE(bias.numel() == N && bias.dtype == out.dtype && bias.location == Location::Device,
                 "matmul: bias {} should be {} elements of {} (the output's dtype) on the device", bias.describe(), N,
                 dtype_name(out.dtype));
  }
  matmul(ctx, out.data, out.dtype, a.data, b.data, a.dtype, static_cast<int>(M), static_cast<int>(N),
         static_cast<int>(K), trans_a, trans_b, alpha, accumulate, bias.empty() ? nullptr : bias.data, stream);
}

}  // namespace llmq::kernels
