// AdamW (decoupled weight decay, PyTorch semantics) for parameter tensors of n elements.
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
// Elements are processed in groups of 8 by adamw_group, which both kernels call; a group uses 16-byte
// vector accesses when all pointers at its tensor's (or piece's) first element are 16-byte aligned and
// the group is complete, element accesses otherwise. adamw_kernel updates one tensor. adamw_multi_kernel
// updates up to kMaxPieces pieces of tensors in flat arrays: their table (group prefix sums, offsets,
// per-piece scalars) is a __grid_constant__ kernel parameter, and each thread finds the piece of its
// group by binary search over the prefix sums, then updates the group exactly as adamw_kernel would.
#include "kernels/adamw.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "core/errors.h"
#include "kernels/kernel_utils.cuh"

namespace llmq::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kGroup = 8;
constexpr int kMaxPieces = 64;  // pieces per launch of adamw_multi_kernel
// Salts separating the random streams of params, m and v.
constexpr std::uint32_t kParamSalt = 0x00000000u, kMoment1Salt = 0x6A09E667u, kMoment2Salt = 0xBB67AE85u;

// Scalars of one step shared by all tensors, derived on the host (in double) from AdamWConfig.
struct StepScalars {
  float lr;
  float beta1, one_minus_beta1;
  float beta2, one_minus_beta2;
  float eps;
  float inv_bias1;       // 1 / (1 - beta1^t)
  float inv_sqrt_bias2;  // 1 / sqrt(1 - beta2^t)
};

// Scalars of one tensor (or slice of one).
struct TensorScalars {
  float lr_times_wd;  // lr * wd (0: no decay)
  std::uint32_t param_key, m_key, v_key;
  std::uint32_t index_offset;  // tensor index of the element at the pointers passed
};

// The pieces of one adamw_multi_kernel launch (about 2.6 KB, within the 4 KB kernel-parameter limit).
struct PieceTable {
  std::uint64_t group_start[kMaxPieces + 1];  // piece j owns the launch's groups [group_start[j], group_start[j + 1])
  std::int64_t begin[kMaxPieces];             // element offset of piece j in the flat arrays
  std::uint32_t n[kMaxPieces];
  TensorScalars tensor[kMaxPieces];
  bool vectorized[kMaxPieces];  // every pointer at begin[j] is 16-byte aligned
  int count;
};
static_assert(sizeof(PieceTable) < 3 * 1024, "adamw_multi_kernel's parameters must stay within 4 KB");

// fp32 stays exact; bf16 is stochastically rounded with bits drawn for (element, key).
template <typename T>
__device__ __forceinline__ T round_to(float x, std::uint32_t element, std::uint32_t key) {
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else {
    return stochastic_round_bf16(x, hash_u32(element, key));
  }
}

// Updates elements [i0, i0 + kGroup) ∩ [0, n) of one tensor whose element 0 is at the pointers passed.
template <typename TP, typename TG, typename TM, typename TV>
__device__ __forceinline__ void adamw_group(TP* params, const TG* grads, TM* m, TV* v, nv_bfloat16* params_bf16_copy,
                                            std::size_t i0, std::size_t n, bool vectorized, const StepScalars& s,
                                            const TensorScalars& t, float scale) {
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
    const auto element = t.index_offset + static_cast<std::uint32_t>(i0 + k);
    const float gk = g[k] * scale;
    const float m_new = s.beta1 * m1[k] + s.one_minus_beta1 * gk;
    const float v_new = s.beta2 * m2[k] + s.one_minus_beta2 * gk * gk;
    const float update = s.lr * (m_new * s.inv_bias1) / (sqrtf(v_new) * s.inv_sqrt_bias2 + s.eps);
    const float p_new = fmaf(-t.lr_times_wd, p[k], p[k]) - update;
    p_out[k] = round_to<TP>(p_new, element, t.param_key);
    m_out[k] = round_to<TM>(m_new, element, t.m_key);
    v_out[k] = round_to<TV>(v_new, element, t.v_key);
    copy_out[k] = __float2bfloat16_rn(to_float(p_out[k]));
  }
  store_group<kGroup>(params, i0, n, vectorized, p_out);
  store_group<kGroup>(m, i0, n, vectorized, m_out);
  store_group<kGroup>(v, i0, n, vectorized, v_out);
  if (params_bf16_copy) store_group<kGroup>(params_bf16_copy, i0, n, vectorized, copy_out);
}

template <typename TP, typename TG, typename TM, typename TV>
__global__ void __launch_bounds__(kThreads)
    adamw_kernel(TP* params, const TG* grads, TM* m, TV* v, std::size_t n, StepScalars s, TensorScalars t,
                 const float* grad_scale, nv_bfloat16* params_bf16_copy, bool vectorized) {
  const float scale = grad_scale ? *grad_scale : 1.f;
  const std::size_t groups = (n + kGroup - 1) / kGroup;
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t group = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; group < groups;
       group += stride) {
    adamw_group(params, grads, m, v, params_bf16_copy, group * kGroup, n, vectorized, s, t, scale);
  }
}

// The piece owning launch group `group`: the last j with group_start[j] <= group (starts strictly increase).
__device__ __forceinline__ int piece_of(const PieceTable& table, std::uint64_t group) {
  int lo = 0, hi = table.count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (table.group_start[mid] <= group) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// __grid_constant__: threads index the table with their own piece number and read it in place (no copy).
template <typename TP, typename TG, typename TM, typename TV>
__global__ void __launch_bounds__(kThreads)
    adamw_multi_kernel(TP* params, const TG* grads, TM* m, TV* v, StepScalars s,
                       const __grid_constant__ PieceTable table, const float* grad_scale) {
  const float scale = grad_scale ? *grad_scale : 1.f;
  const std::uint64_t groups = table.group_start[table.count];
  const std::uint64_t stride = static_cast<std::uint64_t>(gridDim.x) * blockDim.x;
  for (std::uint64_t group = static_cast<std::uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; group < groups;
       group += stride) {
    const int j = piece_of(table, group);
    const std::int64_t b = table.begin[j];
    adamw_group(params + b, grads + b, m + b, v + b, static_cast<nv_bfloat16*>(nullptr),
                (group - table.group_start[j]) * kGroup, table.n[j], table.vectorized[j], s, table.tensor[j], scale);
  }
}

StepScalars derive_step_scalars(const AdamWConfig& c) {
  LLMQ_REQUIRE(c.step >= 1, "adamw: step {} (steps count from 1; the bias correction divides by 1 - beta^step)", c.step);
  LLMQ_REQUIRE(c.beta1 >= 0.f && c.beta1 < 1.f && c.beta2 >= 0.f && c.beta2 < 1.f,
               "adamw: betas ({}, {}) must lie in [0, 1)", c.beta1, c.beta2);
  LLMQ_REQUIRE(std::isfinite(c.lr) && c.lr >= 0.f, "adamw: learning rate {} must be finite and >= 0", c.lr);
  LLMQ_REQUIRE(c.eps >= 0.f && std::isfinite(c.eps), "adamw: epsilon {} must be finite and >= 0", c.eps);
  const double bias1 = 1.0 - std::pow(static_cast<double>(c.beta1), c.step);
  const double bias2 = 1.0 - std::pow(static_cast<double>(c.beta2), c.step);
  StepScalars s;
  s.lr = c.lr;
  s.beta1 = c.beta1;
  s.one_minus_beta1 = static_cast<float>(1.0 - c.beta1);
  s.beta2 = c.beta2;
  s.one_minus_beta2 = static_cast<float>(1.0 - c.beta2);
  s.eps = c.eps;
  s.inv_bias1 = static_cast<float>(1.0 / bias1);
  s.inv_sqrt_bias2 = static_cast<float>(1.0 / std::sqrt(bias2));
  return s;
}

// Also checks that elements [index_offset, index_offset + n) stay within the 32-bit hash index.
TensorScalars derive_tensor_scalars(const AdamWConfig& c, std::uint64_t n) {
  LLMQ_REQUIRE(std::isfinite(c.weight_decay), "adamw: weight decay {} is not finite", c.weight_decay);
  LLMQ_REQUIRE(n <= 0xFFFFFFFFull && c.index_offset <= 0xFFFFFFFFull - n,
               "adamw: elements [{}, {}) of a tensor reach past 2^32 (the rounding hash indexes elements with "
               "32 bits); split the tensor into tensors of fewer elements",
               c.index_offset, c.index_offset + n);
  TensorScalars t;
  t.lr_times_wd = static_cast<float>(static_cast<double>(c.lr) * c.weight_decay);
  const auto step = static_cast<std::uint32_t>(c.step);
  t.param_key = hash_u32(step, c.seed ^ kParamSalt);
  t.m_key = hash_u32(step, c.seed ^ kMoment1Salt);
  t.v_key = hash_u32(step, c.seed ^ kMoment2Salt);
  t.index_offset = static_cast<std::uint32_t>(c.index_offset);
  return t;
}

// Scalars of every piece (checked before anything is launched, so a bad list updates nothing).
std::vector<TensorScalars> derive_piece_scalars(const std::vector<AdamWPiece>& pieces, const AdamWConfig& shared) {
  std::vector<TensorScalars> scalars;
  scalars.reserve(pieces.size());
  std::vector<std::pair<std::int64_t, std::int64_t>> ranges;  // [begin, end) of the pieces with elements
  for (std::size_t i = 0; i < pieces.size(); ++i) {
    const AdamWPiece& piece = pieces[i];
    AdamWConfig c = shared;
    c.weight_decay = piece.weight_decay;
    c.seed = piece.seed;
    c.index_offset = piece.index_offset;
    scalars.push_back(derive_tensor_scalars(c, piece.n));
    LLMQ_REQUIRE(piece.begin >= 0, "adamw_update_multi: piece {} begins at element {} (offsets must be >= 0)", i,
                 piece.begin);
    if (piece.n > 0) ranges.emplace_back(piece.begin, piece.begin + static_cast<std::int64_t>(piece.n));
  }
  std::sort(ranges.begin(), ranges.end());
  for (std::size_t i = 1; i < ranges.size(); ++i) {
    LLMQ_REQUIRE(ranges[i - 1].second <= ranges[i].first,
                 "adamw_update_multi: pieces [{}, {}) and [{}, {}) overlap (each element may be updated once per step)",
                 ranges[i - 1].first, ranges[i - 1].second, ranges[i].first, ranges[i].second);
  }
  return scalars;
}

}  // namespace

template <typename TParam, typename TGrad, typename TMoment1, typename TMoment2>
void adamw_update(TParam* params, const TGrad* grads, TMoment1* m, TMoment2* v, std::size_t n,
                  const AdamWConfig& config, const float* grad_scale, nv_bfloat16* params_bf16_copy,
                  cudaStream_t stream) {
  const StepScalars step = derive_step_scalars(config);
  const TensorScalars tensor = derive_tensor_scalars(config, n);
  if (n == 0) return;
  LLMQ_REQUIRE(params && grads && m && v, "adamw: null params / grads / m / v pointer for a tensor of {} elements", n);
  const bool vectorized = aligned16(params) && aligned16(grads) && aligned16(m) && aligned16(v) &&
                          (params_bf16_copy == nullptr || aligned16(params_bf16_copy));
  const std::size_t groups = (n + kGroup - 1) / kGroup;
  const int blocks = ceil_div(static_cast<long>(groups), kThreads);
  adamw_kernel<<<blocks, kThreads, 0, stream>>>(params, grads, m, v, n, step, tensor, grad_scale, params_bf16_copy,
                                                vectorized);
  LLMQ_CUDA_CHECK_LAUNCH();
}

template <typename TParam, typename TGrad, typename TMoment1, typename TMoment2>
void adamw_update_multi(TParam* params, const TGrad* grads, TMoment1* m, TMoment2* v,
                        const std::vector<AdamWPiece>& pieces, const AdamWConfig& shared, const float* grad_scale,
                        cudaStream_t stream) {
  const StepScalars step = derive_step_scalars(shared);
  const std::vector<TensorScalars> scalars = derive_piece_scalars(pieces, shared);
  const bool any_elements = std::any_of(pieces.begin(), pieces.end(), [](const AdamWPiece& p) { return p.n > 0; });
  if (!any_elements) return;
  LLMQ_REQUIRE(params && grads && m && v, "adamw_update_multi: null params / grads / m / v pointer for {} pieces",
               pieces.size());

  PieceTable table{};  // group_start[0] stays 0
  auto launch = [&] {
    const int blocks = ceil_div(static_cast<long>(table.group_start[table.count]), kThreads);
    adamw_multi_kernel<<<blocks, kThreads, 0, stream>>>(params, grads, m, v, step, table, grad_scale);
    LLMQ_CUDA_CHECK_LAUNCH();
    table.count = 0;
  };
  for (std::size_t i = 0; i < pieces.size(); ++i) {
    const AdamWPiece& piece = pieces[i];
    if (piece.n == 0) continue;  // a piece without groups would break the strictly increasing group starts
    const int j = table.count++;
    const std::int64_t b = piece.begin;
    table.group_start[j + 1] = table.group_start[j] + (piece.n + kGroup - 1) / kGroup;
    table.begin[j] = b;
    table.n[j] = static_cast<std::uint32_t>(piece.n);
    table.tensor[j] = scalars[i];
    table.vectorized[j] = aligned16(params + b) && aligned16(grads + b) && aligned16(m + b) && aligned16(v + b);
    if (table.count == kMaxPieces) launch();
  }
  if (table.count > 0) launch();
}

// Every float / bf16 combination of (params, grads, m, v).
#define LLMQ_INSTANTIATE_ADAMW(TP, TG, TM, TV)                                                                    \
  template void adamw_update<TP, TG, TM, TV>(TP*, const TG*, TM*, TV*, std::size_t, const AdamWConfig&,           \
                                             const float*, nv_bfloat16*, cudaStream_t);                           \
  template void adamw_update_multi<TP, TG, TM, TV>(TP*, const TG*, TM*, TV*, const std::vector<AdamWPiece>&,     \
                                                   const AdamWConfig&, const float*, cudaStream_t);
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
