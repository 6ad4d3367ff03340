// cuBLASLt matrix multiplies (see matmul.h for the math and conventions).
//
// cuBLASLt is column-major. A row-major matrix X[R, C] is, in memory, the column-major matrix
// X^T[C, R] with leading dimension C. So the row-major product out = op(a) @ op(b) is computed as
// the column-major product out^T[N, M] = op(b)^T[N, K] @ op(a)^T[K, M]: cuBLASLt's "A" is our b,
// its "B" is our a, with the same transpose flags, and the bias (one value per column-major row
// of out^T, i.e. per row-major column of out) has N elements.
#include "kernels/matmul.h"

#include <cublasLt.h>

#include <cstdint>
#include <unordered_map>

#include "core/errors.h"

namespace llmq::kernels {

namespace {

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::FP32: return CUDA_R_32F;
    case DType::BF16: return CUDA_R_16BF;
    default: break;
  }
  throw Error(fmt::format("matmul: dtype {} is not supported (use fp32 or bf16)", dtype_name(t)));
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
  DType in_dtype, out_dtype;
  std::uint32_t align_a, align_b, align_out, align_bias;

  bool operator==(const ProblemKey&) const = default;
};

struct ProblemKeyHash {
  std::size_t operator()(const ProblemKey& k) const {
    std::size_t h = 1469598103934665603ull;
    auto mix = [&h](std::uint64_t v) { h = (h ^ v) * 1099511628211ull; };
    mix(static_cast<std::uint32_t>(k.M));
    mix(static_cast<std::uint32_t>(k.N));
    mix(static_cast<std::uint32_t>(k.K));
    mix(k.trans_a | (k.trans_b << 1) | (k.has_bias << 2));
    mix(static_cast<std::uint64_t>(k.in_dtype) << 8 | static_cast<std::uint64_t>(k.out_dtype));
    mix(k.align_a | static_cast<std::uint64_t>(k.align_b) << 16 | static_cast<std::uint64_t>(k.align_out) << 32 |
        static_cast<std::uint64_t>(k.align_bias) << 48);
    return h;
  }
};

std::string describe(const ProblemKey& k) {
  return fmt::format(
      "M={} N={} K={} ({} inputs, {} output, trans_a={}, trans_b={}, bias={}; pointer alignment a={} B, b={} B, "
      "out={} B, bias={} B)",
      k.M, k.N, k.K, dtype_name(k.in_dtype), dtype_name(k.out_dtype), k.trans_a, k.trans_b, k.has_bias, k.align_a,
      k.align_b, k.align_out, k.align_bias);
}

// Descriptors and chosen algorithm of one problem; owns the cuBLASLt descriptors.
class MatmulPlan {
 public:
  MatmulPlan(cublasLtHandle_t handle, const ProblemKey& key, const void* bias, std::size_t workspace_bytes) {
    try {
      create_descriptors(key, bias);
      choose_algorithm(handle, key, workspace_bytes);
    } catch (...) {
      destroy();
      throw;
    }
  }
  ~MatmulPlan() { destroy(); }
  MatmulPlan(const MatmulPlan&) = delete;
  MatmulPlan& operator=(const MatmulPlan&) = delete;

  void run(cublasLtHandle_t handle, void* out, const void* a, const void* b, const void* bias, float alpha,
           bool accumulate, void* workspace, std::size_t workspace_bytes, cudaStream_t stream) {
    if (bias)
      LLMQ_CUBLAS_CHECK(
          cublasLtMatmulDescSetAttribute(op_, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
    const float beta = accumulate ? 1.f : 0.f;
    // cuBLASLt's A is our b and its B is our a (see the head comment); C = D = out.
    LLMQ_CUBLAS_CHECK(cublasLtMatmul(handle, op_, &alpha, b, layout_a_, a, layout_b_, &beta, out, layout_out_, out,
                                     layout_out_, &algo_, workspace, workspace_bytes, stream));
  }

 private:
  cublasLtMatmulDesc_t op_ = nullptr;
  cublasLtMatrixLayout_t layout_a_ = nullptr, layout_b_ = nullptr, layout_out_ = nullptr;
  cublasLtMatmulAlgo_t algo_{};

  void create_descriptors(const ProblemKey& k, const void* bias) {
    LLMQ_CUBLAS_CHECK(cublasLtMatmulDescCreate(&op_, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t op_b = k.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLASLt's transa
    const cublasOperation_t op_a = k.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLASLt's transb
    LLMQ_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op_, CUBLASLT_MATMUL_DESC_TRANSA, &op_b, sizeof(op_b)));
    LLMQ_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op_, CUBLASLT_MATMUL_DESC_TRANSB, &op_a, sizeof(op_a)));
    if (k.has_bias) {
      const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
      const auto bias_type = static_cast<std::int32_t>(cuda_type(k.out_dtype));
      LLMQ_CUBLAS_CHECK(
          cublasLtMatmulDescSetAttribute(op_, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
      LLMQ_CUBLAS_CHECK(
          cublasLtMatmulDescSetAttribute(op_, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof(bias_type)));
      // The heuristic derives the bias alignment from this pointer.
      LLMQ_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op_, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
    }
    // Stored (untransposed) column-major shapes: row-major b is [K, N] (or [N, K] when trans_b),
    // i.e. column-major [N, K] with ld N (or [K, N] with ld K); likewise for a.
    const cudaDataType_t in = cuda_type(k.in_dtype), out = cuda_type(k.out_dtype);
    if (k.trans_b)
      LLMQ_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout_a_, in, k.K, k.N, k.K));
    else
      LLMQ_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout_a_, in, k.N, k.K, k.N));
    if (k.trans_a)
      LLMQ_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout_b_, in, k.M, k.K, k.M));
    else
      LLMQ_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout_b_, in, k.K, k.M, k.K));
    LLMQ_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout_out_, out, k.N, k.M, k.N));
  }

  void choose_algorithm(cublasLtHandle_t handle, const ProblemKey& k, std::size_t workspace_bytes) {
    cublasLtMatmulPreference_t pref = nullptr;
    LLMQ_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    cublasStatus_t status = CUBLAS_STATUS_SUCCESS;
    try {
      const std::uint64_t max_workspace = workspace_bytes;
      set_preference(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, max_workspace);
      set_preference(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, k.align_b);  // cuBLASLt's A is our b
      set_preference(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, k.align_a);
      set_preference(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, k.align_out);
      set_preference(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, k.align_out);
      status = cublasLtMatmulAlgoGetHeuristic(handle, op_, layout_a_, layout_b_, layout_out_, layout_out_, pref, 1,
                                              &result, &found);
    } catch (...) {
      cublasLtMatmulPreferenceDestroy(pref);
      throw;
    }
    cublasLtMatmulPreferenceDestroy(pref);
    LLMQ_REQUIRE(status == CUBLAS_STATUS_SUCCESS && found > 0 && result.state == CUBLAS_STATUS_SUCCESS,
                 "matmul {}: cuBLASLt has no algorithm for this problem (heuristic status {}, {} found). "
                 "bf16 matmuls need K and N (and M when trans_a) to be multiples of 8 on some GPUs and "
                 "buffers aligned to 16 bytes: pad the dimensions or use fp32",
                 describe(k), static_cast<int>(status), found);
    algo_ = result.algo;
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
                       .in_dtype = in_dtype,
                       .out_dtype = out_dtype,
                       .align_a = pointer_alignment(a),
                       .align_b = pointer_alignment(b),
                       .align_out = pointer_alignment(out),
                       .align_bias = bias ? pointer_alignment(bias) : 256u};
  MatmulContext::Impl& impl = *ctx.impl_;
  auto it = impl.plans.find(key);
  if (it == impl.plans.end())
    it = impl.plans.emplace(key, std::make_unique<MatmulPlan>(impl.handle, key, bias, impl.workspace_bytes)).first;
  it->second->run(impl.handle, out, a, b, bias, alpha, accumulate, impl.workspace, impl.workspace_bytes, stream);
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
