// SwiGLU straight to FP8 (declared in swiglu.h).
//
// Per-tensor e5m2 backward (swiglu_backward_e5m2): one pass that reads gate, up and dout
// once and writes dh quantized, row-major and transposed, with no bf16 dh in between. Per element
// of dout that is 6 bytes read and 4 written, where swiglu_backward + quantize_transpose_fp8 move
// 14 (the abs-max pre-pass adds 6 bytes to both ways).
//
// Block (bx, by) covers rows 64*bx .. +64 and columns j = 64*by .. +64 of [0, D): it writes the gate
// tile dh[:, j] and the up tile dh[:, D + j] of q, and both transposed tiles of q_t, through two
// shared-memory tiles (the layout of quantize.cu's quantize_transpose).
#include <cuda_fp8.h>

#include <cstdint>

#include "core/errors.h"
#include "kernels/fp8_common.cuh"
#include "kernels/kernel_utils.cuh"
#include "kernels/quantize.h"
#include "kernels/quantize_blocks.cuh"
#include "kernels/swiglu.h"
#include "kernels/swiglu_math.cuh"

namespace llmq::kernels {
namespace {

using fp8::fp8_byte;
using fp8::kQuantGroup;
using fp8::kTile;

struct SwigluVectorization {
  bool load;     // h and dout 16-byte aligned (D % 8 == 0 is required anyway)
  bool store_q;  // q aligned and D % 16 == 0: both halves of every q row start 16-byte aligned
  bool store_t;  // q_t aligned and N % 16 == 0
};

// kWhole: N and D are multiples of the tile and every access is vectorized (the training shapes), so
// the bounds checks and element paths compile away.
template <bool kWhole>
__global__ void __launch_bounds__(fp8::kTileThreads)
    swiglu_backward_e5m2_kernel(fp8_byte* q, fp8_byte* q_t, float* scale_inv, const nv_bfloat16* dout,
                                const nv_bfloat16* h, const float* absmax, int N, int D, float fp8_max,
                                SwigluVectorization vec) {
  __shared__ alignas(16) fp8::Tile gate_tile, up_tile;
  const float scale = fp8::scale_from_abs_max(*absmax, fp8_max);
  if (blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0) *scale_inv = 1.f / scale;
  const int r0 = blockIdx.x * kTile, c0 = blockIdx.y * kTile;
  const int lr = fp8::tile_row(), lc = fp8::tile_col();
  const std::size_t two_d = 2 * static_cast<std::size_t>(D);
  fp8::Fp8Group q_gate, q_up;  // rows past N stay 0 (never stored)
  if (kWhole || r0 + lr < N) {
    const std::size_t row = r0 + lr;
    // Raw bf16 vectors, converted element by element below: a float copy of all three would double the
    // registers and halve the resident blocks.
    constexpr int kParts = kQuantGroup / Vec<nv_bfloat16>::kSize;
    Vec<nv_bfloat16> gate[kParts], up[kParts], dy[kParts];
    load_raw_group<kQuantGroup, false, kWhole>(h + row * two_d, c0 + lc, D, vec.load, gate);
    load_raw_group<kQuantGroup, false, kWhole>(h + row * two_d + D, c0 + lc, D, vec.load, up);
    load_raw_group<kQuantGroup, false, kWhole>(dout + row * D, c0 + lc, D, vec.load, dy);
#pragma unroll
    for (int k = 0; k < kQuantGroup; k += 2) {
      float d_gate[2], d_up[2];
#pragma unroll
      for (int m = 0; m < 2; ++m) {
        constexpr int kVec = Vec<nv_bfloat16>::kSize;
        const int e = k + m;
        float dg, du;
        swiglu_grad(to_float(gate[e / kVec][e % kVec]), to_float(up[e / kVec][e % kVec]),
                    to_float(dy[e / kVec][e % kVec]), dg, du);
        d_gate[m] = __bfloat162float(__float2bfloat16(dg));  // the bf16 dh the unfused path quantizes
        d_up[m] = __bfloat162float(__float2bfloat16(du));
      }
      fp8::quantize_pair<__NV_E5M2>(q_gate, k, d_gate[0], d_gate[1], scale);
      fp8::quantize_pair<__NV_E5M2>(q_up, k, d_up[0], d_up[1], scale);
    }
    fp8::store_fp8_group<kWhole>(q + row * two_d, c0 + lc, D, vec.store_q, q_gate);
    fp8::store_fp8_group<kWhole>(q + row * two_d + D, c0 + lc, D, vec.store_q, q_up);
  }
  fp8::park_in_tile(gate_tile, q_gate);
  fp8::park_in_tile(up_tile, q_up);
  __syncthreads();
  const int c = c0 + lr;  // this thread writes q_t rows c and D + c, columns r0 + lc .. +16
  if (!kWhole && c >= D) return;
  fp8::store_fp8_group<kWhole>(q_t + static_cast<std::size_t>(c) * N, r0 + lc, N, vec.store_t,
                               fp8::column_from_tile(gate_tile));
  fp8::store_fp8_group<kWhole>(q_t + (static_cast<std::size_t>(D) + c) * N, r0 + lc, N, vec.store_t,
                               fp8::column_from_tile(up_tile));
}

}  // namespace

void swiglu_backward_e5m2(void* q, void* q_t, float* scale_inv, const nv_bfloat16* dout, const nv_bfloat16* h,
                          const float* absmax, int N, int D, cudaStream_t stream) {
  LLMQ_REQUIRE(N > 0 && D > 0 && D % 8 == 0, "swiglu_backward_e5m2: N={} D={} (need positive sizes, D % 8 == 0)", N,
               D);
  LLMQ_REQUIRE(q && q_t && scale_inv && dout && h && absmax,
               "swiglu_backward_e5m2: null pointer (q={}, q_t={}, scale_inv={}, dout={}, h={}, absmax={})", q, q_t,
               static_cast<void*>(scale_inv), static_cast<const void*>(dout), static_cast<const void*>(h),
               static_cast<const void*>(absmax));
  LLMQ_REQUIRE(static_cast<const void*>(scale_inv) != static_cast<const void*>(absmax),
               "swiglu_backward_e5m2: scale_inv and absmax are the same float; give them separate slots");
  LLMQ_REQUIRE(ceil_div(D, kTile) <= 65535, "swiglu_backward_e5m2: D={} exceeds the grid's 65535 tiles", D);
  const SwigluVectorization vec{.load = aligned16(dout) && aligned16(h),
                                .store_q = aligned16(q) && D % 16 == 0,
                                .store_t = aligned16(q_t) && N % 16 == 0};
  const bool whole = vec.load && vec.store_q && vec.store_t && N % kTile == 0 && D % kTile == 0;
  const dim3 grid(ceil_div(N, kTile), ceil_div(D, kTile));
  auto* kernel = whole ? swiglu_backward_e5m2_kernel<true> : swiglu_backward_e5m2_kernel<false>;
  kernel<<<grid, fp8::kTileThreads, 0, stream>>>(static_cast<fp8_byte*>(q), static_cast<fp8_byte*>(q_t), scale_inv, dout,
                                                 h, absmax, N, D, fp8_max(DType::E5M2), vec);
  LLMQ_CUDA_CHECK_LAUNCH();
}

// ---- block-scaled (1 x 128) forward and backward -------------------------------------------------

namespace {

// The SwiGLU output out [N, D] as swiglu_forward writes it (rounded to bf16), 8 values at a time.
struct SwigluForwardSource {
  const nv_bfloat16* h;
  int D;
  __device__ __forceinline__ void load(int row, int col, Vec<nv_bfloat16> (&chunk)[1]) const {
    if (col >= D) return blocks::zero_chunk(chunk);  // D % 8 == 0: a chunk is inside the row or past it
    const nv_bfloat16* gate_at = h + static_cast<std::size_t>(row) * 2 * D + col;
    const Vec<nv_bfloat16> gate = load_vec(gate_at), up = load_vec(gate_at + D);
#pragma unroll
    for (int k = 0; k < blocks::kRowChunk; ++k)
      chunk[0][k] = __float2bfloat16(swiglu_value(__bfloat162float(gate[k]), __bfloat162float(up[k])));
  }
  __device__ __forceinline__ int column_block(int y) const { return y; }
};

// The gradient dh [N, 2D] as swiglu_backward writes it (rounded to bf16). A gate tile and the up
// tile D columns later read the same gate, up and dout: with D % 128 == 0 they take neighbouring
// grid columns, so the second read finds the inputs in L2.
struct SwigluBackwardSource {
  const nv_bfloat16* dout;
  const nv_bfloat16* h;
  int D;
  __device__ __forceinline__ void load(int row, int col, Vec<nv_bfloat16> (&chunk)[1]) const {
    if (col >= 2 * D) return blocks::zero_chunk(chunk);
    const bool up_half = col >= D;
    const int j = up_half ? col - D : col;
    const nv_bfloat16* gate_at = h + static_cast<std::size_t>(row) * 2 * D + j;
    const Vec<nv_bfloat16> gate = load_vec(gate_at), up = load_vec(gate_at + D);
    const Vec<nv_bfloat16> dy = load_vec(dout + static_cast<std::size_t>(row) * D + j);
#pragma unroll
    for (int k = 0; k < blocks::kRowChunk; ++k) {
      float dg, du;
      swiglu_grad(__bfloat162float(gate[k]), __bfloat162float(up[k]), __bfloat162float(dy[k]), dg, du);
      chunk[0][k] = __float2bfloat16(up_half ? du : dg);
    }
  }
  __device__ __forceinline__ int column_block(int y) const {
    const int half = D / blocks::kBlock;
    return D % blocks::kBlock == 0 ? (y % 2 == 0 ? y / 2 : half + y / 2) : y;
  }
};

// h and dout (when given) as the sources read them.
void check_swiglu_inputs(const char* op, const nv_bfloat16* h, const nv_bfloat16* dout, int D) {
  LLMQ_REQUIRE(D % 8 == 0, "{}: D={} must be a multiple of 8", op, D);
  LLMQ_REQUIRE(h && aligned16(h) && (dout == nullptr || aligned16(dout)),
               "{}: h and dout must be non-null and 16-byte aligned (h={}, dout={})", op, static_cast<const void*>(h),
               static_cast<const void*>(dout));
}

}  // namespace

void swiglu_forward_blocks_fp8(void* q, float* q_scale_inv, ScaleLayout q_layout, void* q_t, float* q_t_scale_inv,
                               ScaleLayout q_t_layout, DType q_dtype, const nv_bfloat16* h, int N, int D,
                               cudaStream_t stream) {
  const char* op = "swiglu_forward_blocks_fp8";
  check_swiglu_inputs(op, h, nullptr, D);
  blocks::quantize_source(op, q, q_scale_inv, q_layout, q_t, q_t_scale_inv, q_t_layout, q_dtype, Fp8Blocks::Row128,
                          SwigluForwardSource{h, D}, N, D, stream);
}

void swiglu_backward_blocks_fp8(void* q, float* q_scale_inv, ScaleLayout q_layout, void* q_t, float* q_t_scale_inv,
                                ScaleLayout q_t_layout, DType q_dtype, const nv_bfloat16* dout, const nv_bfloat16* h,
                                int N, int D, cudaStream_t stream) {
  const char* op = "swiglu_backward_blocks_fp8";
  LLMQ_REQUIRE(dout != nullptr, "{}: null dout", op);
  check_swiglu_inputs(op, h, dout, D);
  blocks::quantize_source(op, q, q_scale_inv, q_layout, q_t, q_t_scale_inv, q_t_layout, q_dtype, Fp8Blocks::Row128,
                          SwigluBackwardSource{dout, h, D}, N, 2 * D, stream);
}

}  // namespace llmq::kernels
