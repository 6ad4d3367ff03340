// AdamW (decoupled weight decay, PyTorch semantics) for one parameter tensor of n elements.
//
// With s = *grad_scale (clip scale times any other factor), step t >= 1, per element:
//   g = grad * s
//   p = p - lr * wd * p                       (decoupled decay; wd = 0 for tensors without decay)
//   m = beta1 * m + (1 - beta1) * g
//   v = beta2 * v + (1 - beta2) * g^2
//   p = p - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
// All arithmetic in fp32. Each of params, m, v may be stored in fp32 or bf16, grads in fp32 or bf16.
// bf16 results are stochastically rounded (E[stored] == fp32 result) with random bits
// hash_u32(element, key), key = hash_u32(t, seed ^ salt) with one salt per output, element = the
// index within the whole tensor (index_offset + i for a slice): independent of the launch
// configuration and of slicing, so equal inputs and seed give bit-identical results. Optionally the
// updated parameter is also written as a round-to-nearest bf16 copy.
//
// Elements are processed in groups of 8; a group uses 16-byte vector accesses when all pointers
// are 16-byte aligned and the group is complete, element accesses otherwise.
#include "kernels/adamw.h"

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "core/errors.h"
#include "kernels/kernel_utils.cuh"

namespace llmq::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kGroup = 8;
// Salts separating the random streams of params, m and v.
constexpr std::uint32_t kParamSalt = 0x00000000u, kMoment1Salt = 0x6A09E667u, kMoment2Salt = 0xBB67AE85u;

// Scalars derived on the host (in double) from AdamWConfig.
struct AdamWScalars {
  float lr;
  float beta1, one_minus_beta1;
  float beta2, one_minus_beta2;
  float eps;
  float lr_times_wd;         // lr * wd (0: no decay)
  float inv_bias1;           // 1 / (1 - beta1^t)
  float inv_sqrt_bias2;      // 1 / sqrt(1 - beta2^t)
  std::uint32_t param_key, m_key, v_key;
  std::uint32_t index_offset;  // tensor index of element 0 of this launch
};

// fp32 stays exact; bf16 is stochastically rounded with bits drawn for (element, key).
template <typename T>
__device__ __forceinline__ T round_to(float x, std::uint32_t element, std::uint32_t key) {
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else {
    return stochastic_round_bf16(x, hash_u32(element, key));
  }
}

template <typename TP, typename TG, typename TM, typename TV>
__global__ void __launch_bounds__(kThreads)
    adamw_kernel(TP* params, const TG* grads, TM* m, TV* v, std::size_t n, AdamWScalars s, const float* grad_scale,
                 nv_bfloat16* params_bf16_copy, bool vectorized) {
  const float scale = grad_scale ? *grad_scale : 1.f;
  const std::size_t groups = (n + kGroup - 1) / kGroup;
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t group = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; group < groups;
       group += stride) {
    const std::size_t i0 = group * kGroup;
    float p[kGroup], g[kGroup], m1[kGroup], m2[kGroup];
    load_group<kGroup>(params, i0, n, vectorized, p);
    load_group<kGroup>(grads, i0, n, vectorized, g);
    load_group<kGroup>(m, i0, n, vectorized, m1);
    load_group<kGroup>(v, i0, n, vectorized, m2);

    TP p_out[kGroup];
    TM m_out[kGroup];
    TV v_out[kGroup];
    nv_bfloat16 copy_out[kGroup];
#pragma unroll
    for (int k = 0; k < kGroup; ++k) {
      const auto element = s.index_offset + static_cast<std::uint32_t>(i0 + k);
      const float gk = g[k] * scale;
      const float m_new = s.beta1 * m1[k] + s.one_minus_beta1 * gk;
      const float v_new = s.beta2 * m2[k] + s.one_minus_beta2 * gk * gk;
      const float update = s.lr * (m_new * s.inv_bias1) / (sqrtf(v_new) * s.inv_sqrt_bias2 + s.eps);
      const float p_new = fmaf(-s.lr_times_wd, p[k], p[k]) - update;
      p_out[k] = round_to<TP>(p_new, element, s.param_key);
      m_out[k] = round_to<TM>(m_new, element, s.m_key);
      v_out[k] = round_to<TV>(v_new, element, s.v_key);
      copy_out[k] = __float2bfloat16_rn(to_float(p_out[k]));
    }
    store_group<kGroup>(params, i0, n, vectorized, p_out);
    store_group<kGroup>(m, i0, n, vectorized, m_out);
    store_group<kGroup>(v, i0, n, vectorized, v_out);
    if (params_bf16_copy) store_group<kGroup>(params_bf16_copy, i0, n, vectorized, copy_out);
  }
}

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

AdamWScalars derive_scalars(const AdamWConfig& c) {
  LLMQ_REQUIRE(c.step >= 1, "adamw: step {} (steps count from 1; the bias correction divides by 1 - beta^step)", c.step);
  LLMQ_REQUIRE(c.beta1 >= 0.f && c.beta1 < 1.f && c.beta2 >= 0.f && c.beta2 < 1.f,
               "adamw: betas ({}, {}) must lie in [0, 1)", c.beta1, c.beta2);
  LLMQ_REQUIRE(std::isfinite(c.lr) && c.lr >= 0.f, "adamw: learning rate {} must be finite and >= 0", c.lr);
  LLMQ_REQUIRE(c.eps >= 0.f && std::isfinite(c.eps), "adamw: epsilon {} must be finite and >= 0", c.eps);
  LLMQ_REQUIRE(std::isfinite(c.weight_decay), "adamw: weight decay {} is not finite", c.weight_decay);
  const double bias1 = 1.0 - std::pow(static_cast<double>(c.beta1), c.step);
  const double bias2 = 1.0 - std::pow(static_cast<double>(c.beta2), c.step);
  AdamWScalars s;
  s.lr = c.lr;
  s.beta1 = c.beta1;
  s.one_minus_beta1 = static_cast<float>(1.0 - c.beta1);
  s.beta2 = c.beta2;
  s.one_minus_beta2 = static_cast<float>(1.0 - c.beta2);
  s.eps = c.eps;
  s.lr_times_wd = static_cast<float>(static_cast<double>(c.lr) * c.weight_decay);
  s.inv_bias1 = static_cast<float>(1.0 / bias1);
  s.inv_sqrt_bias2 = static_cast<float>(1.0 / std::sqrt(bias2));
  const auto step = static_cast<std::uint32_t>(c.step);
  s.param_key = hash_u32(step, c.seed ^ kParamSalt);
  s.m_key = hash_u32(step, c.seed ^ kMoment1Salt);
  s.v_key = hash_u32(step, c.seed ^ kMoment2Salt);
  s.index_offset = static_cast<std::uint32_t>(c.index_offset);
  return s;
}

}  // namespace

template <typename TParam, typename TGrad, typename TMoment1, typename TMoment2>
void adamw_update(TParam* params, const TGrad* grads, TMoment1* m, TMoment2* v, std::size_t n,
                  const AdamWConfig& config, const float* grad_scale, nv_bfloat16* params_bf16_copy,
                  cudaStream_t stream) {
  const AdamWScalars scalars = derive_scalars(config);
  LLMQ_REQUIRE(n <= 0xFFFFFFFFull && config.index_offset <= 0xFFFFFFFFull - n,
               "adamw: elements [{}, {}) of a tensor reach past 2^32 (the rounding hash indexes elements with "
               "32 bits); split the tensor into tensors of fewer elements",
               config.index_offset, config.index_offset + n);
  if (n == 0) return;
  LLMQ_REQUIRE(params && grads && m && v, "adamw: null params / grads / m / v pointer for a tensor of {} elements", n);
  const bool vectorized = aligned16(params) && aligned16(grads) && aligned16(m) && aligned16(v) &&
                          (params_bf16_copy == nullptr || aligned16(params_bf16_copy));
  const std::size_t groups = (n + kGroup - 1) / kGroup;
  const int blocks = ceil_div(static_cast<long>(groups), kThreads);
  adamw_kernel<<<blocks, kThreads, 0, stream>>>(params, grads, m, v, n, scalars, grad_scale, params_bf16_copy,
                                                vectorized);
  LLMQ_CUDA_CHECK_LAUNCH();
}

// Every float / bf16 combination of (params, grads, m, v).
#define LLMQ_INSTANTIATE_ADAMW(TP, TG, TM, TV)                                                        \
  template void adamw_update<TP, TG, TM, TV>(TP*, const TG*, TM*, TV*, std::size_t, const AdamWConfig&, \
                                             const float*, nv_bfloat16*, cudaStream_t);
#define LLMQ_INSTANTIATE_ADAMW_MV(TP, TG)            \
  LLMQ_INSTANTIATE_ADAMW(TP, TG, float, float)       \
  LLMQ_INSTANTIATE_ADAMW(TP, TG, float, nv_bfloat16) \
  LLMQ_INSTANTIATE_ADAMW(TP, TG, nv_bfloat16, float) \
  LLMQ_INSTANTIATE_ADAMW(TP, TG, nv_bfloat16, nv_bfloat16)
LLMQ_INSTANTIATE_ADAMW_MV(float, float)
LLMQ_INSTANTIATE_ADAMW_MV(float, nv_bfloat16)
LLMQ_INSTANTIATE_ADAMW_MV(nv_bfloat16, float)
LLMQ_INSTANTIATE_ADAMW_MV(nv_bfloat16, nv_bfloat16)
#undef LLMQ_INSTANTIATE_ADAMW_MV
#undef LLMQ_INSTANTIATE_ADAMW

}  // namespace llmq::kernels
