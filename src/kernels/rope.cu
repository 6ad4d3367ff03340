// Rotary position embedding, Qwen2/Llama "rotate half" (non-interleaved) form, forward and backward.
//
// Shapes: qkv [B, T, Hq + 2*Hkv, Hs] with heads ordered q (Hq), k (Hkv), v (Hkv); cos_sin [T, Hs/2]
// float2 {cos, sin}. fp32 or bf16 storage, fp32 math. For position t (index in the sequence) and
// i < Hs/2, each q or k head pairs dimensions i and i + Hs/2:
//   inv_freq_i = 1 / theta^(2i / Hs)          angle = t * inv_freq_i
//   Forward:  out_i        = x_i * cos(angle) - x_{i+Hs/2} * sin(angle)
//             out_{i+Hs/2} = x_{i+Hs/2} * cos(angle) + x_i * sin(angle)
//   Backward: the same with angle -> -angle (the rotation is orthogonal, so its transpose is its inverse):
//             dx_i = dy_i * cos + dy_{i+Hs/2} * sin,  dx_{i+Hs/2} = dy_{i+Hs/2} * cos - dy_i * sin
// v heads are not rotated: left untouched in place, copied when out != in.
//
// The table follows transformers' Qwen2RotaryEmbedding (default rope type, attention scaling 1) step by
// step in fp32: e = float(2i) / float(Hs); inv_freq = 1.0f / float(theta ** e); angle = float(t) * inv_freq;
// then cos, sin of that fp32 angle. theta ** e, cos and sin are evaluated in double and rounded once to
// fp32 (correctly rounded, so within 1 ulp of PyTorch's fp32 pow / cos / sin). In a bf16 model
// transformers casts cos and sin to bf16 before multiplying; round_to_bf16 reproduces that cast.
//
// Work split: one thread per pair of 16-byte vectors (x[i .. i+k) and x[i+Hs/2 .. i+Hs/2+k)), so
// Hs/2 must be a multiple of the vector width 8: Hs % 16 == 0 (Qwen2.5: Hs = 64 or 128).
//
// Abs-max (FP8 scales): given `absmax`, the launchers also fold max |v| over the whole output tensor,
// q, k and v heads, into *absmax (zeroed by the caller; only ever maxed into); rotated values are taken
// after rounding to the element type. In place the v heads are not written, so the abs-max launch also
// covers them and only reads them (an extra read of Hkv / (Hq + 2*Hkv) of the tensor). The abs-max kernel
// runs one wave of blocks (as many as fit on the GPU at once) that loop with the grid's stride, each thread keeping
// a running max in a register that its warp adds with one atomic at the end: about one atomic per
// resident warp. Without absmax: one vector pair per thread and no loop, the kernel as before.
#include "kernels/rope.h"

#include <algorithm>
#include <cstdint>

#include "core/errors.h"
#include "kernels/kernel_utils.cuh"

namespace llmq::kernels {
namespace {

constexpr int kThreads = 256;

__global__ void rope_table_kernel(float2* __restrict__ cos_sin, int T, int Hs, float theta, bool round_to_bf16) {
  const int half = Hs / 2;
  const long idx = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= static_cast<long>(T) * half) return;
  const int t = static_cast<int>(idx / half);
  const int i = static_cast<int>(idx % half);
  const float exponent = static_cast<float>(2 * i) / static_cast<float>(Hs);
  const float base_pow = static_cast<float>(pow(static_cast<double>(theta), static_cast<double>(exponent)));
  const float inv_freq = 1.0f / base_pow;
  const float angle = static_cast<float>(t) * inv_freq;
  double s, c;
  sincos(static_cast<double>(angle), &s, &c);
  float cf = static_cast<float>(c), sf = static_cast<float>(s);
  if (round_to_bf16) {
    cf = __bfloat162float(__float2bfloat16_rn(cf));
    sf = __bfloat162float(__float2bfloat16_rn(sf));
  }
  cos_sin[idx] = make_float2(cf, sf);
}

// Threads enumerate (row = b*T + t, head, vector index within the first half). Heads >= rotated_heads
// (the v heads; launched when out != in or with an abs-max) are copied when out != in, else only read
// for the abs-max. sin_sign = +1 forward, -1 backward.
template <typename T, bool kAbsMax>
__global__ void rope_kernel(T* out, const T* in, const float2* __restrict__ cos_sin, float* absmax, int T_seq,
                            int heads_launched, int rotated_heads, int heads_total, int Hs, float sin_sign,
                            long num_threads) {
  constexpr int K = Vec<T>::kSize;
  const int half = Hs / 2;
  const int vecs_per_half = half / K;
  unsigned int absmax_bits = 0;  // |out| of this thread's elements, see max_abs_bits
  auto vector_pair = [&](long idx) {
    const int i = static_cast<int>(idx % vecs_per_half) * K;
    const long rest = idx / vecs_per_half;
    const int head = static_cast<int>(rest % heads_launched);
    const long row = rest / heads_launched;
    const int t = static_cast<int>(row % T_seq);

    const long base = (row * heads_total + head) * Hs + i;
    const Vec<T> x1 = load_vec(in + base);
    const Vec<T> x2 = load_vec(in + base + half);
    if (head >= rotated_heads) {
      if (out != in) {
        store_vec(out + base, x1);
        store_vec(out + base + half, x2);
      }
      if constexpr (kAbsMax) {
#pragma unroll
        for (int k = 0; k < K; ++k) {
          absmax_bits = max_abs_bits(absmax_bits, to_float(x1[k]));
          absmax_bits = max_abs_bits(absmax_bits, to_float(x2[k]));
        }
      }
      return;
    }
    // K float2 entries = K/2 aligned float4 loads (half % 8 == 0 and i % K == 0 keep them 16-byte aligned).
    const float4* table = reinterpret_cast<const float4*>(cos_sin + static_cast<long>(t) * half + i);
    Vec<T> y1, y2;
#pragma unroll
    for (int k = 0; k < K; k += 2) {
      const float4 cs = table[k / 2];  // {cos_k, sin_k, cos_k+1, sin_k+1}
      const float c[2] = {cs.x, cs.z};
      const float s[2] = {sin_sign * cs.y, sin_sign * cs.w};
#pragma unroll
      for (int m = 0; m < 2; ++m) {
        const float a = to_float(x1[k + m]), b = to_float(x2[k + m]);
        y1[k + m] = from_float<T>(a * c[m] - b * s[m]);
        y2[k + m] = from_float<T>(b * c[m] + a * s[m]);
        if constexpr (kAbsMax) {
          absmax_bits = max_abs_bits(absmax_bits, to_float(y1[k + m]));
          absmax_bits = max_abs_bits(absmax_bits, to_float(y2[k + m]));
        }
      }
    }
    store_vec(out + base, y1);
    store_vec(out + base + half, y2);
  };

  // Without an abs-max one pair per thread (the grid covers num_threads: no loop, the kernel as it was);
  // with one a grid-stride loop over a capped grid, then one atomic per warp.
  const long first = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if constexpr (kAbsMax) {
    for (long idx = first; idx < num_threads; idx += static_cast<long>(gridDim.x) * blockDim.x) vector_pair(idx);
    atomic_max_abs(absmax, __uint_as_float(absmax_bits));  // every lane gets here
  } else if (first < num_threads) {
    vector_pair(first);
  }
}

void require_aligned(const void* p, const char* what, const char* op) {
  LLMQ_REQUIRE(aligned16(p),
               "{}: {} at {} is not 16-byte aligned (kernels use 16-byte vector access)", op, what, p);
}

template <typename T>
void launch_rope(const char* op, T* out, const T* in, const float2* cos_sin, int B, int T_seq, int Hq, int Hkv, int Hs,
                 float sin_sign, cudaStream_t stream, float* absmax) {
  LLMQ_REQUIRE(B > 0 && T_seq > 0 && Hq > 0 && Hkv > 0 && Hs > 0,
               "{}: sizes must be positive (B={}, T={}, Hq={}, Hkv={}, Hs={})", op, B, T_seq, Hq, Hkv, Hs);
  LLMQ_REQUIRE(Hs % 16 == 0, "{}: head size Hs={} is not a multiple of 16 (each half is read as 16-byte vectors)", op,
               Hs);
  require_aligned(out, "out", op);
  require_aligned(in, "in", op);
  require_aligned(cos_sin, "cos_sin", op);
  const int rotated_heads = Hq + Hkv;
  const int heads_total = Hq + 2 * Hkv;
  // In place the v heads need a thread only to be read for the abs-max.
  const int heads_launched = out == in && absmax == nullptr ? rotated_heads : heads_total;
  const long num_threads = static_cast<long>(B) * T_seq * heads_launched * (Hs / 2 / Vec<T>::kSize);
  const int blocks = ceil_div(num_threads, kThreads);
  if (absmax != nullptr) {
    const int capped = std::min(blocks, resident_blocks(rope_kernel<T, true>, kThreads));
    rope_kernel<T, true><<<capped, kThreads, 0, stream>>>(out, in, cos_sin, absmax, T_seq, heads_launched,
                                                          rotated_heads, heads_total, Hs, sin_sign, num_threads);
  } else {
    rope_kernel<T, false><<<blocks, kThreads, 0, stream>>>(out, in, cos_sin, nullptr, T_seq, heads_launched,
                                                           rotated_heads, heads_total, Hs, sin_sign, num_threads);
  }
  LLMQ_CUDA_CHECK_LAUNCH();
}

}  // namespace

void rope_cos_sin_table(float2* cos_sin, int T, int Hs, float theta, bool round_to_bf16, cudaStream_t stream) {
  LLMQ_REQUIRE(T > 0 && Hs > 0 && Hs % 2 == 0, "rope_cos_sin_table: need T > 0 and an even Hs > 0 (T={}, Hs={})", T,
               Hs);
  LLMQ_REQUIRE(theta > 1.f, "rope_cos_sin_table: theta={} must be > 1 (config.json rope_theta)", theta);
  LLMQ_REQUIRE(cos_sin != nullptr, "rope_cos_sin_table: cos_sin is null");
  const long entries = static_cast<long>(T) * (Hs / 2);
  rope_table_kernel<<<ceil_div(entries, kThreads), kThreads, 0, stream>>>(cos_sin, T, Hs, theta, round_to_bf16);
  LLMQ_CUDA_CHECK_LAUNCH();
}

void rope_forward(float* out, const float* in, const float2* cos_sin, int B, int T, int Hq, int Hkv, int Hs,
                  cudaStream_t stream, float* absmax) {
  launch_rope("rope_forward", out, in, cos_sin, B, T, Hq, Hkv, Hs, 1.f, stream, absmax);
}
void rope_forward(nv_bfloat16* out, const nv_bfloat16* in, const float2* cos_sin, int B, int T, int Hq, int Hkv, int Hs,
                  cudaStream_t stream, float* absmax) {
  launch_rope("rope_forward", out, in, cos_sin, B, T, Hq, Hkv, Hs, 1.f, stream, absmax);
}

void rope_backward(float* dinp, const float* dout, const float2* cos_sin, int B, int T, int Hq, int Hkv, int Hs,
                   cudaStream_t stream, float* absmax) {
  launch_rope("rope_backward", dinp, dout, cos_sin, B, T, Hq, Hkv, Hs, -1.f, stream, absmax);
}
void rope_backward(nv_bfloat16* dinp, const nv_bfloat16* dout, const float2* cos_sin, int B, int T, int Hq, int Hkv,
                   int Hs, cudaStream_t stream, float* absmax) {
  launch_rope("rope_backward", dinp, dout, cos_sin, B, T, Hq, Hkv, Hs, -1.f, stream, absmax);
}

}  // namespace llmq::kernels
