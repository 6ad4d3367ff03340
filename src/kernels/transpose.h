// Transpose of a row-major matrix of 1-byte elements (FP8 e4m3 / e5m2 bytes). A quantized FP8
// tensor keeps its per-tensor scale under transposition, so transposing the bytes of q gives
// exactly the quantized transpose: the backward pass makes W^T from the cached FP8 W this way
// instead of quantizing again. Math and tiling in transpose.cu.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace llmq::kernels {

// out[c * rows + r] = in[r * cols + c] for in [rows, cols] and out [cols, rows], both row-major,
// 1 byte per element. rows, cols >= 1; in and out must not overlap (no in-place transpose).
// Fastest when rows and cols are multiples of 16 and both pointers are 16-byte aligned.
void transpose_bytes(void* out, const void* in, std::int64_t rows, std::int64_t cols, cudaStream_t stream);

}  // namespace llmq::kernels
