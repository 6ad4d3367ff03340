// Matrix multiplies through cuBLASLt, in row-major (PyTorch) conventions:
//
//   out[M, N] (+)= alpha * op(a) @ op(b) (+ bias[N] broadcast over rows)
//
// where a is [M, K] ([K, M] when trans_a) and b is [K, N] ([N, K] when trans_b), all row-major and
// contiguous. Typical uses in a linear layer y = x @ W^T + bias with W [Cout, Cin]:
//   forward  y[N, Cout]     = x[N, Cin] @ W[Cout, Cin]^T          trans_b
//   backward dx[N, Cin]     = dy[N, Cout] @ W[Cout, Cin]
//            dW[Cout, Cin] += dy[N, Cout]^T @ x[N, Cin]            trans_a, accumulate
//
// Supported element types (accumulation is always fp32, CUBLAS_COMPUTE_32F, never TF32):
//   a, b fp32 -> out fp32;  a, b bf16 -> out bf16 or fp32.
// The bias has the dtype of `out`. With accumulate=true the old contents of `out` are read
// (beta = 1), also when `out` is bf16.
//
// FP8 (matmul_fp8): out[M, N] (+)= (a_scale_inv[0] * b_scale_inv[0]) * a[M, K] @ b[N, K]^T (+ bias[N])
// with a and b row-major FP8, both K-major: the only layout Hopper's FP8 GEMMs take ("TN" in
// cuBLASLt's column-major terms). The scales are device pointers (per-tensor current scaling, see
// quantize.h), read by the GEMM itself, so no host synchronization is needed. Supported:
//   a x b dtypes: e4m3 x e4m3, e4m3 x e5m2, e5m2 x e4m3 (e5m2 x e5m2 has no cuBLASLt kernel);
//   out: bf16 or fp32; bias: bf16 in both cases (cuBLASLt's FP8 kernels take a bf16 bias also
//   when the output is fp32); accumulation in fp32 with periodic promotion, or, with fast_accum,
//   in the tensor cores' reduced-precision accumulator only (faster, less accurate);
//   sizes: K and N multiples of 16, a, b and out 16-byte aligned (cuBLASLt's FP8 requirement: every
//   row of a, b and out starts 16-byte aligned); M is free.
//
// A MatmulContext owns the cuBLASLt handle and caches, per problem (shape, transposes, dtypes,
// bias epilogue, FP8 fast accumulation, pointer alignment), the descriptors and the algorithm:
// cuBLASLt's first heuristic answer, or with autotune the fastest of its top candidates, timed
// on the problem's first call. Every algorithm gives the same bits run after run, but a timed
// choice can differ between runs: choices() / preset_choices() let a resumed run replay it.
// It is not thread-safe: use one context per thread (and do not run two streams' matmuls on
// one context concurrently, they would share its workspace).
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <map>
#include <memory>
#include <string>

#include "core/dtype.h"
#include "core/tensor.h"
#include "kernels/quantize_blocks.h"

namespace llmq::kernels {

struct Fp8Operand;

class MatmulContext {
 public:
  // cuBLASLt's recommended workspace on Hopper; smaller works, with fewer algorithms to choose from.
  static constexpr std::size_t kRecommendedWorkspaceBytes = std::size_t{32} << 20;

  // `workspace` (device memory, >= 256-byte aligned, may be null when workspace_bytes == 0) stays
  // owned by the caller, who allocates it through llmq::Allocator (category Workspace) so the
  // memory budget stays exact. It must outlive the context.
  MatmulContext(void* workspace, std::size_t workspace_bytes);
  ~MatmulContext();
  MatmulContext(const MatmulContext&) = delete;
  MatmulContext& operator=(const MatmulContext&) = delete;

  // Number of distinct problems seen so far (each has one cached algorithm).
  std::size_t cached_problems() const;

  // With autotune, a problem's first call (outside graph capture) times the heuristic's top 8
  // candidates on its own operands and keeps the fastest; the call's result is what it would have
  // been anyway (an accumulating call's output is saved and restored; without free device memory
  // for that copy the heuristic's choice stands). Off by default.
  void set_autotune(bool on);
  // The algorithm of each problem so far: problem description -> index in the heuristic's ranking.
  std::map<std::string, int> choices() const;
  // Problems named here take the given candidate instead of being tuned (also those already seen).
  // Only meaningful on the GPU and library of environment() where the choices were made.
  void preset_choices(const std::map<std::string, int>& choices);
  // The current GPU and the cuBLASLt version: what the choices depend on.
  static std::string environment();

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
  friend void matmul(MatmulContext&, void*, DType, const void*, const void*, DType, int, int, int, bool, bool, float,
                     bool, const void*, cudaStream_t);
  friend void matmul_fp8(MatmulContext&, void*, DType, const Fp8Operand&, const Fp8Operand&, int, int, int, bool,
                         const void*, bool, cudaStream_t);
};

// Raw-pointer launcher (see the head comment for the math). bias may be null.
void matmul(MatmulContext& ctx, void* out, DType out_dtype, const void* a, const void* b, DType in_dtype, int M, int N,
            int K, bool trans_a, bool trans_b, float alpha, bool accumulate, const void* bias, cudaStream_t stream);

// Tensor-level wrapper. Every tensor is read as a matrix [rows, last dim] where rows is the product
// of the leading dimensions (so x [B, T, C] is [B*T, C]). Checks that the shapes fit
// (out [M, N], op(a) [M, K], op(b) [K, N]), the dtypes, the location, and bias (empty: none;
// otherwise N elements of out's dtype); throws llmq::Error naming the offending tensor.
void matmul(MatmulContext& ctx, const Tensor& out, const Tensor& a, const Tensor& b, bool trans_a, bool trans_b,
            float alpha, bool accumulate, const Tensor& bias, cudaStream_t stream);

// FP8 launcher (see the head comment for the math). a [M, K] and b [N, K] hold FP8 values of
// a_dtype / b_dtype; a_scale_inv and b_scale_inv point to one float each on the device (the
// scale_inv written by quantize_fp8). bias may be null, else N bf16 values. accumulate reads the
// old out (beta = 1). Throws llmq::Error for unsupported dtype pairs, sizes or alignments.
void matmul_fp8(MatmulContext& ctx, void* out, DType out_dtype, const void* a, DType a_dtype, const float* a_scale_inv,
                const void* b, DType b_dtype, const float* b_scale_inv, int M, int N, int K, bool accumulate,
                const void* bias, bool fast_accum, cudaStream_t stream);

// How an FP8 operand is scaled: cuBLASLt's scale modes (the block modes need Hopper; on Ada and
// Blackwell cuBLASLt has no such kernels and matmul_fp8 reports that no algorithm exists).
enum class Fp8Scaling {
  Tensor,        // one scale_inv for the whole operand (SCALAR_32F)
  Block1x128,    // one per row and 128 consecutive K elements (VEC128_32F)
  Block128x128,  // one per 128 x 128 block (BLK128x128_32F); no fast accumulation with either block mode
};

// Where the GEMM reads the scale_inv of block (i, j) of an operand [rows, k] (i: the row for
// Block1x128, the block row for Block128x128; j: the block of 128 K elements), to hand to
// quantize_blocks_fp8 (Row128 / Square128), and the floats the operand's scale array spans.
// Block1x128: [k / 128][rows rounded up to 4], rows contiguous; Block128x128: [rows / 128][k / 128
// rounded up to 4], K blocks contiguous (cuBLASLt's layouts as documented for Hopper; the `scaling`
// stage of scripts/gpu_check.sh checks them on the GPU).
ScaleLayout fp8_scale_layout(Fp8Scaling scaling, int rows, int k);
std::size_t fp8_scale_count(Fp8Scaling scaling, int rows, int k);

// One FP8 operand of matmul_fp8: [rows, K] K-major values of `dtype` and their scale_inv (one
// float, or the block scales laid out as fp8_scale_layout says; 16-byte aligned either way).
struct Fp8Operand {
  const void* data;
  DType dtype;
  const float* scale_inv;
  Fp8Scaling scaling = Fp8Scaling::Tensor;
};

// The FP8 launcher with per-operand scaling (the one above is its per-tensor case).
void matmul_fp8(MatmulContext& ctx, void* out, DType out_dtype, const Fp8Operand& a, const Fp8Operand& b, int M, int N,
                int K, bool accumulate, const void* bias, bool fast_accum, cudaStream_t stream);

}  // namespace llmq::kernels
