// FP8 block-scaled quantization of a bf16 tensor (quantize_blocks.h); the kernel and its math are
// in quantize_blocks.cuh.
#include "kernels/quantize_blocks.h"

#include "core/errors.h"
#include "kernels/quantize.h"
#include "kernels/quantize_blocks.cuh"

namespace llmq::kernels {

namespace blocks {
void check_block_outputs(const char* op, const void* q, const float* q_scale_inv, const void* q_t,
                         const float* q_t_scale_inv, int rows, int cols) {
  LLMQ_REQUIRE(rows > 0 && cols > 0, "{}: rows={} cols={} must be positive", op, rows, cols);
  LLMQ_REQUIRE(q || q_t, "{}: both outputs are null; pass q, q_t or both", op);
  LLMQ_REQUIRE(!q || q_scale_inv, "{}: q without its scale_inv array", op);
  LLMQ_REQUIRE(!q_t || q_t_scale_inv, "{}: q_t without its scale_inv array", op);
  LLMQ_REQUIRE(ceil_div(cols, kBlock) <= 65535, "{}: cols={} exceeds {} (grid y limit of 65535 blocks of {}); split the "
               "tensor", op, cols, 65535 * kBlock, kBlock);
}
}  // namespace blocks

void quantize_blocks_fp8(void* q, float* q_scale_inv, ScaleLayout q_layout, void* q_t, float* q_t_scale_inv,
                         ScaleLayout q_t_layout, DType q_dtype, Fp8Blocks blocks, const nv_bfloat16* x, int rows,
                         int cols, cudaStream_t stream) {
  LLMQ_REQUIRE(x != nullptr, "quantize_blocks_fp8: null input pointer for [{}, {}]", rows, cols);
  blocks::quantize_source("quantize_blocks_fp8", q, q_scale_inv, q_layout, q_t, q_t_scale_inv, q_t_layout, q_dtype,
                          blocks, blocks::TensorSource{x, cols, aligned16(x) && cols % 8 == 0}, rows, cols, stream);
}

}  // namespace llmq::kernels
