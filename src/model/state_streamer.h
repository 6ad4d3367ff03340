// StateStreamer: how the optimizer reaches the parameter state (weights, gradients, Adam m and v)
// when parts of it live in pinned host memory (--offload-master, --offload-gradients,
// --offload-opt-m, --offload-opt-v). Each role is a ParamStore (param_store.h).
//
// The flat range [0, P) is walked in chunks of at most K elements that never cross a placement
// boundary of any role. Per chunk, each role is reached in one of three ways:
//   on device          the role's device pointer, no copy.
//   zero-copy          (use_zero_copy) the pinned host pointer itself: offloaded memory is mapped
//                      (cudaHostAllocMapped; with unified addressing the host pointer is valid in
//                      kernels), so the AdamW kernel reads and writes it in place over PCIe.
//   streamed           through two device staging buffers of K elements per offloaded role.
//                      Per chunk c (buffer b = c % 2):
//                        upload stream:   wait until chunk c-2 has left buffer b; copy host -> b
//                        compute stream:  wait for the upload; run the caller's update on the chunk
//                        download stream: wait for the update; copy b -> host (roles written back)
//                      so chunk c+1's upload and chunk c-1's download overlap chunk c's update.
// Device memory of the streamed mode: 2 * K * (bytes per element of each offloaded role), fixed,
// whatever the model size. Chunks ignore parameter boundaries; the caller splits its
// per-parameter work at chunk edges.
#pragma once
#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <functional>
#include <vector>

#include "core/allocator.h"
#include "model/copy_streams.h"
#include "model/param_store.h"

namespace llmq {

class StateStreamer {
 public:
  // Chunk of the streamed mode when none is asked for: 8M elements (32 MiB per fp32 staging buffer).
  static constexpr std::int64_t kDefaultChunkElements = std::int64_t{1} << 23;

  struct Role {
    const ParamStore* store = nullptr;
    bool written = false;  // the update writes it (copied back to host memory when streamed)
  };
  // roles: all of size P. chunk_elements: K, 0 = min(kDefaultChunkElements, P). Staging buffers
  // come from `alloc` (category Workspace) for the streamed roles only.
  StateStreamer(Allocator& alloc, std::vector<Role> roles, bool zero_copy, std::int64_t chunk_elements);
  ~StateStreamer();
  StateStreamer(const StateStreamer&) = delete;
  StateStreamer& operator=(const StateStreamer&) = delete;

  bool streamed() const { return streamed_; }
  std::int64_t chunk_elements() const { return chunk_; }

  // update(begin, end, pointers): enqueue on `compute` the work for elements [begin, end);
  // pointers[r] addresses element `begin` of a device-accessible copy of role r. Called for
  // consecutive chunks covering [0, P). When this returns, all of it, the copies back to host
  // memory included, is ordered before later work on `compute`.
  using ChunkUpdate = std::function<void(std::int64_t begin, std::int64_t end, const std::vector<void*>& pointers)>;
  void for_each_chunk(cudaStream_t compute, const ChunkUpdate& update);

 private:
  struct Staged {
    Role role;
    bool staged = false;  // has staging buffers (offloaded and not zero-copy)
    std::array<Tensor, 2> staging;
  };
  std::int64_t chunk_end(std::int64_t begin) const;
  void copy_chunk(const Staged& s, int buffer, std::int64_t begin, std::int64_t end, bool to_device,
                  cudaStream_t stream) const;

  std::int64_t total_ = 0;  // P
  std::int64_t chunk_ = 0;  // K
  bool streamed_ = false;
  std::vector<Staged> roles_;
  CopyStreams streams_;
  cudaEvent_t start_ = nullptr;
  std::array<cudaEvent_t, 2> uploaded_{}, updated_{}, downloaded_{};
};

}  // namespace llmq
