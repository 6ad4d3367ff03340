// Fused softmax cross-entropy, forward and backward in one kernel, applied to one chunk of rows
// of the LM head output so that B*T*V logits never exist at once.
//
// Shapes: logits [R, V] (fp32 or bf16, row-major, R rows of this chunk), targets int32 [R],
// losses fp32 [R]. Per row r with target t (t == -1: ignored position):
//   M       = max_j x_j
//   lse     = M + log(sum_j exp(x_j - M))                          (fp32 throughout)
//   p_j     = exp(x_j - lse)                                       (softmax)
//   loss_r  = lse - x_t + z * lse^2                                (z: z-loss weight, 0 = off)
//   dx_j    = (p_j - [j == t] + 2 z lse p_j) * grad_scale           (d loss_r / d x_j, scaled)
// dx overwrites x in place. Ignored rows get loss 0 and dx = 0. grad_scale is usually
// 1 / (number of non-ignored targets in the whole step), which makes dx the gradient of the mean loss.
// Parts of a row combine through their (max M_k, S_k = sum exp(x - M_k)): M = max_k M_k,
// S = sum_k S_k exp(M_k - M); both kernels below build lse that way.
//
// The op is bandwidth bound, so the aim is one DRAM read of x and one DRAM write of dx per element.
//
// bf16 (the training path): cross_entropy_cluster_kernel, a Hopper thread-block cluster of n CTAs
// (1 <= n <= 8) per row. Each CTA owns a contiguous slice of the row's 16-byte vectors:
//   1. thread 0 issues TMA bulk copies (cp.async.bulk) of the whole slice into shared memory at once,
//      in 8 chunks with one mbarrier each, so the slice is in flight together;
//   2. every thread folds each chunk into its running (max, sum of exp) as soon as the chunk lands,
//      then the CTA reduces them to its (M_k, S_k) and publishes that pair in shared memory;
//   3. after a cluster barrier every thread reads the n pairs through distributed shared memory in
//      rank order 0..n-1 and combines them (the same bits in every CTA of the row);
//   4. dx is computed from the shared-memory copy and written once.
// n follows from V and the device's shared memory: the smallest n whose slice lets 3 CTAs share an
// SM (else 2, else 1), so that on each SM one CTA's loads overlap another CTA's exp/store phase.
// Qwen2.5 (V = 151936, 297 KB a row) on an H100 (228 KB of shared memory per SM): n = 4, 74 KB a
// CTA, 3 CTAs per SM. A cluster rather than one block because a Qwen row does not fit one SM's shared
// memory; the (M, S) exchange stays on chip, with no second launch and no global scratch.
// exp(a - b) is computed as exp2(a log2e - b log2e): one FFMA and one MUFU op.
//
// Fallback (cross_entropy_kernel, also the fp32 path): one block per row, two passes. Pass 1 keeps a
// running (max, sum of exp) per thread (rescaled when the max grows), combined over the block; pass 2
// rereads x and writes dx. bf16 rows use it when 8 CTAs' shared memory cannot hold them
// (V > about 929k on an H100), when the device has no cluster launch, or when it refuses the cluster.
//
// Rows are traversed as 16-byte vectors, with scalar head/tail elements (fewer than 8 each) where the
// row start is not 16-byte aligned or V is not a multiple of the vector width; in the cluster kernel
// rank 0 keeps those few in registers. Every reduction order follows from V, the row's alignment and
// the device's shared memory size alone (no atomics), so results are bit-reproducible run to run.
// The kernel choice is made once per (device, V) and kept; only a refused cluster launch switches
// that V to the two-pass kernel for good (within tolerance, but other bits).
//
// loss_sum (the step's summed loss and target count) is in loss_sum.cu.
#include "kernels/cross_entropy.h"

#include <cooperative_groups.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cuda/ptx>
#include <mutex>
#include <vector>

#include "core/errors.h"
#include "kernels/kernel_utils.cuh"

namespace llmq::kernels {
namespace {

namespace cg = cooperative_groups;
using bf16 = nv_bfloat16;

constexpr int kRowThreads = 512;

constexpr int kClusterThreads = 256;
constexpr int kMaxClusterCtas = 8;  // the portable cluster size limit
constexpr int kBf16Vec = Vec<bf16>::kSize;
static_assert(2 * kBf16Vec <= kClusterThreads, "rank 0 keeps one scalar head/tail element per thread");

// A row splits into scalar elements [0, head), 16-byte vectors [head, body_end), scalar [body_end, V).
struct RowSplit {
  int head;
  int body_end;
  int scalar_count;  // head + (V - body_end)
  // Index of the i-th scalar element.
  __device__ int scalar_index(int i) const { return i < head ? i : body_end + (i - head); }
};

template <typename T>
__device__ RowSplit split_row(const T* row, int V) {
  constexpr int kVec = Vec<T>::kSize;
  const int misaligned = static_cast<int>((reinterpret_cast<std::uintptr_t>(row) % 16) / sizeof(T));
  const int head = misaligned ? min(kVec - misaligned, V) : 0;
  const int body_end = head + (V - head) / kVec * kVec;
  return {head, body_end, head + (V - body_end)};
}

// ---- two-pass kernel (fp32, and the bf16 fallback) ----------------------------------------------

// Adds `count` values to a running (max m, sum s of exp(x - m)), rescaling s when the max grows.
__device__ __forceinline__ void online_softmax_add(float& m, float& s, const float* x, int count) {
  float new_max = m;
  for (int j = 0; j < count; ++j) new_max = fmaxf(new_max, x[j]);
  if (new_max == -INFINITY) return;  // only -inf so far: contributes nothing
  if (new_max > m) {
    s = (m == -INFINITY) ? 0.f : s * expf(m - new_max);
    m = new_max;
  }
  for (int j = 0; j < count; ++j) s += expf(x[j] - m);
}

template <typename T>
__device__ void zero_row(T* row, const RowSplit& split) {
  constexpr int kVec = Vec<T>::kSize;
  Vec<T> zeros;
  for (int k = 0; k < kVec; ++k) zeros[k] = from_float<T>(0.f);
  for (int i = split.head + threadIdx.x * kVec; i < split.body_end; i += blockDim.x * kVec) store_vec(row + i, zeros);
  for (int i = threadIdx.x; i < split.scalar_count; i += blockDim.x) row[split.scalar_index(i)] = from_float<T>(0.f);
}

template <typename T>
__global__ void __launch_bounds__(kRowThreads)
    cross_entropy_kernel(T* logits, const std::int32_t* targets, float* losses, int V, GradScale scale, float z_loss) {
  __shared__ float reduce_scratch[kWarpSize];
  constexpr int kVec = Vec<T>::kSize;
  const int r = blockIdx.x;
  T* row = logits + static_cast<std::size_t>(r) * V;
  const RowSplit split = split_row(row, V);
  const int target = targets[r];
  const float grad_scale = scale.get();

  if (target == kIgnoreTarget) {
    zero_row(row, split);
    if (threadIdx.x == 0) losses[r] = 0.f;
    return;
  }
  const bool target_in_range = target >= 0 && target < V;
  // Read before the block reductions below: their barriers order it before any pass-2 write.
  const float target_logit = (threadIdx.x == 0 && target_in_range) ? to_float(row[target]) : NAN;

  // Pass 1: running max and sum of exponentials.
  float m = -INFINITY, s = 0.f;
  for (int i = split.head + threadIdx.x * kVec; i < split.body_end; i += blockDim.x * kVec) {
    const Vec<T> v = load_vec(row + i);
    float x[kVec];
    for (int k = 0; k < kVec; ++k) x[k] = to_float(v[k]);
    online_softmax_add(m, s, x, kVec);
  }
  for (int i = threadIdx.x; i < split.scalar_count; i += blockDim.x) {
    const float x = to_float(row[split.scalar_index(i)]);
    online_softmax_add(m, s, &x, 1);
  }
  const float row_max = block_max(m, reduce_scratch);
  const float rescaled = (m == -INFINITY) ? 0.f : s * expf(m - row_max);
  const float lse = row_max + logf(block_sum(rescaled, reduce_scratch));

  if (threadIdx.x == 0) losses[r] = lse - target_logit + z_loss * lse * lse;

  // Pass 2: dx = (p * (1 + 2 z lse) - onehot) * grad_scale, written over x.
  const float softmax_factor = (1.f + 2.f * z_loss * lse) * grad_scale;
  for (int i = split.head + threadIdx.x * kVec; i < split.body_end; i += blockDim.x * kVec) {
    Vec<T> v = load_vec(row + i);
    for (int k = 0; k < kVec; ++k) {
      float dx = expf(to_float(v[k]) - lse) * softmax_factor;
      if (i + k == target) dx -= grad_scale;
      v[k] = from_float<T>(dx);
    }
    store_vec(row + i, v);
  }
  for (int i = threadIdx.x; i < split.scalar_count; i += blockDim.x) {
    const int j = split.scalar_index(i);
    float dx = expf(to_float(row[j]) - lse) * softmax_factor;
    if (j == target) dx -= grad_scale;
    row[j] = from_float<T>(dx);
  }
}

// ---- single-read cluster kernel (bf16) ----------------------------------------------------------

// Clusters, TMA bulk copies and distributed shared memory exist from sm_90 on. Device passes for older
// GPUs compile an empty kernel, which the host never launches there (no cudaDevAttrClusterLaunch).
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
#define LLMQ_CROSS_ENTROPY_CLUSTERS 1
#else
#define LLMQ_CROSS_ENTROPY_CLUSTERS 0
#endif

#if LLMQ_CROSS_ENTROPY_CLUSTERS

constexpr int kLoadChunks = 8;  // TMA copies (one mbarrier each) per slice
constexpr float kLog2e = 1.4426950408889634f;

// exp(x - b) given b_log2 = b * log2(e).
__device__ __forceinline__ float exp_shifted(float x, float b_log2) { return exp2f(fmaf(x, kLog2e, -b_log2)); }

// online_softmax_add with exp through exp_shifted.
__device__ __forceinline__ void online_add_exp2(float& m, float& s, const float* x, int count) {
  float new_max = m;
  for (int j = 0; j < count; ++j) new_max = fmaxf(new_max, x[j]);
  if (new_max == -INFINITY) return;  // only -inf so far: contributes nothing
  if (new_max > m) {
    s = (m == -INFINITY) ? 0.f : s * exp_shifted(m, new_max * kLog2e);
    m = new_max;
  }
  const float m_log2 = m * kLog2e;
  for (int j = 0; j < count; ++j) s += exp_shifted(x[j], m_log2);
}

__device__ __forceinline__ void unpack(const Vec<bf16>& v, float (&x)[kBf16Vec]) {
#pragma unroll
  for (int k = 0; k < kBf16Vec; ++k) x[k] = __bfloat162float(v[k]);
}
__device__ __forceinline__ Vec<bf16> pack(const float (&x)[kBf16Vec]) {
  Vec<bf16> v;
#pragma unroll
  for (int k = 0; k < kBf16Vec; k += 2) {
    const __nv_bfloat162 pair = __floats2bfloat162_rn(x[k], x[k + 1]);
    v[k] = pair.x;
    v[k + 1] = pair.y;
  }
  return v;
}

// The vectors of a row that one CTA of the cluster owns: `count` vectors from `vecs` (global memory),
// the first of which is element `first` of the row. Rank 0 also owns the scalar head/tail elements.
struct RowSlice {
  RowSplit split;
  bf16* vecs;
  int first;
  int count;
};

__device__ RowSlice cta_slice(bf16* row, int V, int rank, int ctas) {
  const RowSplit split = split_row(row, V);
  const int body_vecs = (split.body_end - split.head) / kBf16Vec;
  const int per_cta = (body_vecs + ctas - 1) / ctas;  // not ceil_div: its 64-bit division is slow here
  const int begin = min(body_vecs, rank * per_cta);
  const int end = min(body_vecs, begin + per_cta);
  const int first = split.head + begin * kBf16Vec;
  return {split, row + first, first, end - begin};
}

// Chunk c of a slice of `count` vectors is [chunk_begin(count, c), chunk_begin(count, c + 1)).
__device__ __forceinline__ int chunk_begin(int count, int c) { return count * c / kLoadChunks; }

// Thread 0 only: arms one mbarrier per chunk with the chunk's byte count and starts its TMA bulk copy.
__device__ void start_slice_copy(Vec<bf16>* cached, const bf16* vecs, int count, std::uint64_t* chunk_ready) {
  for (int c = 0; c < kLoadChunks; ++c) cuda::ptx::mbarrier_init(&chunk_ready[c], 1);
  cuda::ptx::fence_mbarrier_init(cuda::ptx::sem_release, cuda::ptx::scope_cluster);  // visible to the copy engine
  for (int c = 0; c < kLoadChunks; ++c) {
    const int lo = chunk_begin(count, c), hi = chunk_begin(count, c + 1);
    if (lo == hi) continue;
    const auto bytes = static_cast<std::uint32_t>((hi - lo) * sizeof(Vec<bf16>));
    cuda::ptx::mbarrier_arrive_expect_tx(cuda::ptx::sem_release, cuda::ptx::scope_cta, cuda::ptx::space_shared,
                                         &chunk_ready[c], bytes);
    cuda::ptx::cp_async_bulk(cuda::ptx::space_cluster, cuda::ptx::space_global, cached + lo, vecs + lo * kBf16Vec,
                             bytes, &chunk_ready[c]);
  }
}

__device__ __forceinline__ void wait_chunk(std::uint64_t* chunk_ready) {
  while (!cuda::ptx::mbarrier_try_wait_parity(chunk_ready, 0)) {
  }
}

// lse of the whole row from the CTAs' (max, sum of exp) pairs, read through distributed shared
// memory and combined in rank order, so that every CTA of the cluster gets the same bits.
__device__ float cluster_lse(float2* cta_max_sum, int ctas) {
  float2 part[kMaxClusterCtas];
#pragma unroll
  for (int k = 0; k < kMaxClusterCtas; ++k)
    part[k] = k < ctas ? *cg::this_cluster().map_shared_rank(cta_max_sum, k) : make_float2(-INFINITY, 0.f);
  float row_max = -INFINITY;
#pragma unroll
  for (int k = 0; k < kMaxClusterCtas; ++k) row_max = fmaxf(row_max, part[k].x);
  const float row_max_log2 = row_max * kLog2e;
  float row_sum = 0.f;
#pragma unroll
  for (int k = 0; k < kMaxClusterCtas; ++k)
    if (part[k].x != -INFINITY) row_sum += part[k].y * exp_shifted(part[k].x, row_max_log2);
  return row_max + logf(row_sum);
}

#endif  // LLMQ_CROSS_ENTROPY_CLUSTERS

// Grid: R clusters of `ctas` CTAs (cluster dims set at launch), CTA rank k of cluster r owns slice k
// of row r. Dynamic shared memory: the largest slice, ceil((V / 8) / ctas) vectors.
__global__ void __launch_bounds__(kClusterThreads)
    cross_entropy_cluster_kernel(bf16* logits, const std::int32_t* targets, float* losses, int V, GradScale scale,
                                 float z_loss) {
#if LLMQ_CROSS_ENTROPY_CLUSTERS
  extern __shared__ __align__(128) unsigned char slice_smem[];
  __shared__ __align__(8) std::uint64_t chunk_ready[kLoadChunks];
  __shared__ float reduce_scratch[kWarpSize];
  __shared__ float2 cta_max_sum;

  const cg::cluster_group cluster = cg::this_cluster();
  const int ctas = static_cast<int>(cluster.num_blocks());
  const int rank = static_cast<int>(cluster.block_rank());
  const int r = blockIdx.x / ctas;
  bf16* row = logits + static_cast<std::size_t>(r) * V;
  const RowSlice slice = cta_slice(row, V, rank, ctas);
  Vec<bf16>* cached = reinterpret_cast<Vec<bf16>*>(slice_smem);
  const int target = targets[r];
  const float grad_scale = scale.get();
  const bool holds_scalar = rank == 0 && static_cast<int>(threadIdx.x) < slice.split.scalar_count;
  const int scalar_j = holds_scalar ? slice.split.scalar_index(threadIdx.x) : 0;

  if (target == kIgnoreTarget) {  // the same for the whole cluster: no CTA waits at a cluster barrier
    Vec<bf16> zeros;
    for (int k = 0; k < kBf16Vec; ++k) zeros[k] = __float2bfloat16_rn(0.f);
    for (int i = threadIdx.x; i < slice.count; i += blockDim.x) store_vec(slice.vecs + i * kBf16Vec, zeros);
    if (holds_scalar) row[scalar_j] = __float2bfloat16_rn(0.f);
    if (rank == 0 && threadIdx.x == 0) losses[r] = 0.f;
    return;
  }

  if (threadIdx.x == 0) start_slice_copy(cached, slice.vecs, slice.count, chunk_ready);
  const float scalar_x = holds_scalar ? __bfloat162float(row[scalar_j]) : 0.f;
  const bool target_in_range = target >= 0 && target < V;
  // Read before the cluster barrier below, which orders it before any CTA overwrites row[target].
  const float target_logit =
      (rank == 0 && threadIdx.x == 0 && target_in_range) ? __bfloat162float(row[target]) : NAN;
  __syncthreads();  // the mbarriers are initialised before anyone waits on them

  // Running max and sum of exponentials, chunk by chunk as the copies land.
  float m = -INFINITY, s = 0.f;
  if (holds_scalar) online_add_exp2(m, s, &scalar_x, 1);
  for (int c = 0; c < kLoadChunks; ++c) {
    const int lo = chunk_begin(slice.count, c), hi = chunk_begin(slice.count, c + 1);
    if (lo == hi) continue;
    wait_chunk(&chunk_ready[c]);
    for (int i = lo + threadIdx.x; i < hi; i += blockDim.x) {
      float x[kBf16Vec];
      unpack(load_vec(reinterpret_cast<const bf16*>(cached + i)), x);
      online_add_exp2(m, s, x, kBf16Vec);
    }
  }
  const float cta_max = block_max(m, reduce_scratch);
  const float cta_sum = block_sum(m == -INFINITY ? 0.f : s * exp_shifted(m, cta_max * kLog2e), reduce_scratch);
  if (threadIdx.x == 0) cta_max_sum = make_float2(cta_max, cta_sum);
  cluster.sync();  // every CTA's pair is published
  const float lse = cluster_lse(&cta_max_sum, ctas);
  // Done reading the other CTAs' shared memory; the matching wait at the end keeps ours alive until
  // they are done with it too.
  cluster.barrier_arrive();

  if (rank == 0 && threadIdx.x == 0) losses[r] = lse - target_logit + z_loss * lse * lse;

  // dx = (p * (1 + 2 z lse) - onehot) * grad_scale, from the shared-memory copy, written over x.
  const float lse_log2 = lse * kLog2e;
  const float softmax_factor = (1.f + 2.f * z_loss * lse) * grad_scale;
  for (int i = threadIdx.x; i < slice.count; i += blockDim.x) {
    float x[kBf16Vec];
    unpack(load_vec(reinterpret_cast<const bf16*>(cached + i)), x);
    const int first = slice.first + i * kBf16Vec;
#pragma unroll
    for (int k = 0; k < kBf16Vec; ++k) {
      x[k] = exp_shifted(x[k], lse_log2) * softmax_factor;
      if (first + k == target) x[k] -= grad_scale;
    }
    store_vec(slice.vecs + i * kBf16Vec, pack(x));
  }
  if (holds_scalar) {
    float dx = exp_shifted(scalar_x, lse_log2) * softmax_factor;
    if (scalar_j == target) dx -= grad_scale;
    row[scalar_j] = __float2bfloat16_rn(dx);
  }
  cluster.barrier_wait();
#endif
}
#undef LLMQ_CROSS_ENTROPY_CLUSTERS

// ---- launch planning (bf16 cluster kernel) ------------------------------------------------------

// How rows of bf16 logits of one width V run on one device.
struct ClusterPlan {
  int ctas = 0;                // CTAs per row (the cluster size); 0: the two-pass kernel
  std::size_t smem_bytes = 0;  // dynamic shared memory per CTA: the largest slice of a row
};

// Launch configuration of the cluster kernel for `rows` rows; `cluster_dim` must outlive the result.
cudaLaunchConfig_t cluster_config(const ClusterPlan& plan, int rows, cudaStream_t stream,
                                  cudaLaunchAttribute& cluster_dim) {
  cluster_dim = {};
  cluster_dim.id = cudaLaunchAttributeClusterDimension;
  cluster_dim.val.clusterDim.x = static_cast<unsigned>(plan.ctas);
  cluster_dim.val.clusterDim.y = 1;
  cluster_dim.val.clusterDim.z = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(static_cast<unsigned>(rows) * static_cast<unsigned>(plan.ctas));
  config.blockDim = dim3(kClusterThreads);
  config.dynamicSmemBytes = plan.smem_bytes;
  config.stream = stream;
  config.attrs = &cluster_dim;
  config.numAttrs = 1;
  return config;
}

// Clusters of this plan that can be resident at once; 0 when the device cannot schedule even one.
int active_clusters(const ClusterPlan& plan) {
  cudaLaunchAttribute cluster_dim;
  const cudaLaunchConfig_t config = cluster_config(plan, 1, nullptr, cluster_dim);
  int clusters = 0;
  // Not LLMQ_CUDA_CHECK: a configuration the device rejects is an answer here (use the fallback).
  if (cudaOccupancyMaxActiveClusters(&clusters, cross_entropy_cluster_kernel, &config) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return clusters;
}

// The smallest cluster whose slices let 3 CTAs share an SM, else 2, else 1; none (two-pass kernel)
// when even 8 CTAs of the largest shared memory cannot hold a row, or the device has no clusters.
ClusterPlan find_cluster_plan(int device, int V) {
  int cluster_launch = 0;
  LLMQ_CUDA_CHECK(cudaDeviceGetAttribute(&cluster_launch, cudaDevAttrClusterLaunch, device));
  if (!cluster_launch) return {};
  int per_block_optin = 0, per_sm = 0, reserved_per_block = 0;
  LLMQ_CUDA_CHECK(cudaDeviceGetAttribute(&per_block_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  LLMQ_CUDA_CHECK(cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device));
  LLMQ_CUDA_CHECK(cudaDeviceGetAttribute(&reserved_per_block, cudaDevAttrReservedSharedMemoryPerBlock, device));
  cudaFuncAttributes attributes{};
  LLMQ_CUDA_CHECK(cudaFuncGetAttributes(&attributes, cross_entropy_cluster_kernel));
  const long static_bytes = static_cast<long>(attributes.sharedSizeBytes);
  const long max_dynamic = per_block_optin - static_bytes;
  LLMQ_CUDA_CHECK(cudaFuncSetAttribute(cross_entropy_cluster_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(max_dynamic)));
  // The kernel reads global memory only through TMA: give the whole L1/shared array to shared memory.
  LLMQ_CUDA_CHECK(cudaFuncSetAttribute(cross_entropy_cluster_kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                       static_cast<int>(cudaSharedmemCarveoutMaxShared)));
  const long row_vecs = V / kBf16Vec;  // the most body vectors any row alignment leaves
  for (int ctas_per_sm = 3; ctas_per_sm >= 1; --ctas_per_sm) {
    const long budget = std::min(max_dynamic, per_sm / ctas_per_sm - reserved_per_block - static_bytes);
    for (int ctas = 1; ctas <= kMaxClusterCtas; ++ctas) {
      const ClusterPlan plan{ctas, static_cast<std::size_t>(ceil_div(row_vecs, ctas)) * sizeof(Vec<bf16>)};
      if (static_cast<long>(plan.smem_bytes) <= budget && active_clusters(plan) > 0) return plan;
    }
  }
  return {};
}

// Plans per (device, V), made once: the choice fixes the reduction order, so it must not change
// between calls, and the device queries are not free.
class ClusterPlanCache {
 public:
  ClusterPlan get(int device, int V) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const Entry& e : entries_)
      if (e.device == device && e.V == V) return e.plan;
    entries_.push_back({device, V, find_cluster_plan(device, V)});
    return entries_.back().plan;
  }
  // After the device refused a cluster launch: use the two-pass kernel from now on.
  void disable(int device, int V) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (Entry& e : entries_)
      if (e.device == device && e.V == V) e.plan = {};
  }

 private:
  struct Entry {
    int device;
    int V;
    ClusterPlan plan;
  };
  std::mutex mutex_;
  std::vector<Entry> entries_;
};

ClusterPlanCache& cluster_plans() {
  static ClusterPlanCache cache;
  return cache;
}

int current_device() {
  int device = 0;
  LLMQ_CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

// ---- launchers ----------------------------------------------------------------------------------

template <typename T>
void check_arguments(const T* logits, const std::int32_t* targets, const float* losses, int R, int V) {
  LLMQ_REQUIRE(R >= 0 && V > 0, "cross_entropy: bad shape R={} V={} (need R >= 0, V > 0)", R, V);
  LLMQ_REQUIRE(R == 0 || (logits && targets && losses),
               "cross_entropy: null pointer (logits {}, targets {}, losses {})", static_cast<const void*>(logits),
               static_cast<const void*>(targets), static_cast<const void*>(losses));
}

template <typename T>
void launch_two_pass(T* logits, const std::int32_t* targets, float* losses, int R, int V, GradScale grad_scale,
                     float z_loss, cudaStream_t stream) {
  cross_entropy_kernel<T><<<R, kRowThreads, 0, stream>>>(logits, targets, losses, V, grad_scale, z_loss);
  LLMQ_CUDA_CHECK_LAUNCH();
}

// False (and nothing launched) when the device refuses the cluster configuration.
bool launch_cluster(const ClusterPlan& plan, bf16* logits, const std::int32_t* targets, float* losses, int R, int V,
                    GradScale grad_scale, float z_loss, cudaStream_t stream) {
  cudaLaunchAttribute cluster_dim;
  const cudaLaunchConfig_t config = cluster_config(plan, R, stream, cluster_dim);
  const cudaError_t status =
      cudaLaunchKernelEx(&config, cross_entropy_cluster_kernel, logits, targets, losses, V, grad_scale, z_loss);
  if (status == cudaErrorInvalidClusterSize || status == cudaErrorLaunchOutOfResources) {
    (void)cudaGetLastError();  // clear the refusal; the caller launches the fallback
    return false;
  }
  LLMQ_CUDA_CHECK(status);
  LLMQ_CUDA_CHECK_LAUNCH();
  return true;
}

}  // namespace

void cross_entropy_forward_backward(float* logits, const std::int32_t* targets, float* losses, int R, int V,
                                    GradScale grad_scale, float z_loss, cudaStream_t stream) {
  check_arguments(logits, targets, losses, R, V);
  if (R == 0) return;
  launch_two_pass(logits, targets, losses, R, V, grad_scale, z_loss, stream);
}

void cross_entropy_forward_backward(nv_bfloat16* logits, const std::int32_t* targets, float* losses, int R, int V,
                                    GradScale grad_scale, float z_loss, cudaStream_t stream) {
  check_arguments(logits, targets, losses, R, V);
  if (R == 0) return;
  const int device = current_device();
  const ClusterPlan plan = cluster_plans().get(device, V);
  if (plan.ctas > 0 && static_cast<long>(R) * plan.ctas <= INT_MAX) {
    if (launch_cluster(plan, logits, targets, losses, R, V, grad_scale, z_loss, stream)) return;
    cluster_plans().disable(device, V);
  }
  launch_two_pass(logits, targets, losses, R, V, grad_scale, z_loss, stream);
}

int cross_entropy_bf16_ctas_per_row(int V) {
  LLMQ_REQUIRE(V > 0, "cross_entropy_bf16_ctas_per_row: vocabulary size V={} must be positive", V);
  return cluster_plans().get(current_device(), V).ctas;
}

}  // namespace llmq::kernels
