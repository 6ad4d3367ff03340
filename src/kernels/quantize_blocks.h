// FP8 block-scaled "current scaling": one scale per block of 128 elements along a row (1 x 128) or
// per 128 x 128 block, each from the abs-max of its own block, in one pass over the bf16 tensor and
// with no abs-max pass before it (the per-tensor scheme of quantize.h needs the whole tensor's
// abs-max first). These are the blocks cuBLASLt's VEC128_32F and BLK128x128_32F scale modes read on
// Hopper. Math per block (quantize_blocks.cu): the per-tensor formulas of quantize.h with the
// block's abs-max in place of the tensor's.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "core/dtype.h"

namespace llmq::kernels {

enum class Fp8Blocks {
  Row128,     // q: one scale per (row, 128 columns); q_t: one per (column, 128 rows)
  Square128,  // one scale per 128 x 128 block, for q and (transposed) q_t alike
};

// Where the scale_inv of block (i, j) is stored: scale_inv[i * i_stride + j * j_stride]. For q,
// i is the row (Row128) or the block row (Square128) and j the block column; for q_t [cols, rows],
// the same of the transposed tensor (i: a column of x or a block column, j: a block row).
struct ScaleLayout {
  std::int64_t i_stride;
  std::int64_t j_stride;
};

// x [rows, cols] (row-major bf16) -> q [rows, cols] and/or q_t [cols, rows] in q_dtype (E4M3 or
// E5M2), each with its scale_inv array (x ~= q * scale_inv of the element's block). q or q_t may be
// null (with its scales), not both. Blocks at the edges cover what is left of the tensor.
void quantize_blocks_fp8(void* q, float* q_scale_inv, ScaleLayout q_layout, void* q_t, float* q_t_scale_inv,
                         ScaleLayout q_t_layout, DType q_dtype, Fp8Blocks blocks, const nv_bfloat16* x, int rows,
                         int cols, cudaStream_t stream);

}  // namespace llmq::kernels
