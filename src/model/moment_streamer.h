// MomentStreamer: how the optimizer reaches Adam's moments m and v when they may live in pinned
// host memory (--offload-opt-m / --offload-opt-v).
//
// Three ways, chosen at construction:
//   on device          m and v are device tensors; one chunk covers the whole flat range.
//   zero-copy          offloaded moments are mapped pinned memory (cudaHostAllocMapped; with unified
//                      addressing the host pointer is valid in kernels), so the AdamW kernel reads
//                      and writes them in place over PCIe; again one chunk.
//   streamed (default when a moment is offloaded)
//                      the flat range [0, P) is cut into chunks of K elements; each offloaded moment
//                      has two device staging buffers of K elements. Per chunk c (buffer b = c % 2):
//                        upload stream:   wait until chunk c-2 has left buffer b; copy host -> b
//                        compute stream:  wait for the upload; run the caller's update on the chunk
//                        download stream: wait for the update; copy b -> host
//                      so chunk c+1's upload and chunk c-1's download overlap chunk c's update.
//                      Device memory: 2 * K * (bytes per element of each offloaded moment), fixed,
//                      whatever the model size.
// Chunks ignore parameter boundaries; the caller splits its per-parameter work at chunk edges.
#pragma once
#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <functional>

#include "core/allocator.h"
#include "core/tensor.h"

namespace llmq {

class MomentStreamer {
 public:
  // Chunk of the streamed mode when none is asked for: 8M elements (32 MiB per fp32 staging buffer).
  static constexpr std::int64_t kDefaultChunkElements = std::int64_t{1} << 23;

  // m, v: the flat moment tensors of P elements each (device, or pinned / write-combined host for
  // offloaded ones). chunk_elements: K of the streamed mode, 0 = min(kDefaultChunkElements, P).
  // Staging buffers come from `alloc` (category Workspace) only when streaming is needed.
  MomentStreamer(Allocator& alloc, const Tensor& m, const Tensor& v, bool zero_copy, std::int64_t chunk_elements);
  ~MomentStreamer();
  MomentStreamer(const MomentStreamer&) = delete;
  MomentStreamer& operator=(const MomentStreamer&) = delete;

  bool streamed() const { return streamed_; }
  std::int64_t chunk_elements() const { return chunk_; }

  // update(begin, end, m_at_begin, v_at_begin): enqueue on `compute` the work for elements
  // [begin, end); the pointers address element `begin` of a device-accessible copy of m / v (moment
  // dtypes as in the tensors). Calls it for consecutive chunks covering [0, P). When this returns,
  // all work, the copies back to host memory included, is ordered before later work on `compute`.
  using ChunkUpdate = std::function<void(std::int64_t begin, std::int64_t end, void* m, void* v)>;
  void for_each_chunk(cudaStream_t compute, const ChunkUpdate& update);

 private:
  // One moment: the tensor and, when streamed, its two staging buffers.
  struct Moment {
    Tensor tensor;
    bool staged = false;
    std::array<Tensor, 2> staging;
    std::byte* at(std::int64_t element) const {
      return tensor.bytes_ptr() + element * static_cast<std::int64_t>(dtype_size(tensor.dtype));
    }
  };
  void stream_chunks(cudaStream_t compute, const ChunkUpdate& update);
  void copy_chunk(const Moment& moment, int buffer, std::int64_t begin, std::int64_t end, bool to_device,
                  cudaStream_t stream) const;

  std::int64_t total_ = 0;  // P
  std::int64_t chunk_ = 0;  // K
  bool streamed_ = false;
  Moment m_, v_;
  cudaStream_t upload_stream_ = nullptr, download_stream_ = nullptr;
  cudaEvent_t start_ = nullptr;
  std::array<cudaEvent_t, 2> uploaded_{}, updated_{}, downloaded_{};
};

}  // namespace llmq
