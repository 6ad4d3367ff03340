// ResidualStreamer (--offload-residual): the residual stream residual[0..L] (the input of every
// layer, [N, C] each, the one activation kept per layer even with --recompute-block) lives in
// pinned host memory; the device holds two slots and residual[i] always uses slot i % 2
// (RunState points residual[i] at it).
//
// Forward:  begin_write(i) before residual[i] is produced (waits until slot i % 2 is no longer
//           needed for residual[i-2]), end_write(i) after: a copy to host memory starts at once on
//           its own stream and overlaps the next layer.
// Backward: fetch(i) before residual[i] is read (copies it back unless the slot still holds it:
//           the last two from the forward pass), prefetch(i-1) to overlap the next copy with this
//           layer, release(i) after the last read.
// With --recompute-block the activation memory then no longer grows with depth.
#pragma once
#include <cuda_runtime.h>

#include <array>
#include <cstddef>
#include <vector>

#include "core/allocator.h"
#include "model/copy_streams.h"
#include "core/tensor.h"

namespace llmq {

class ResidualStreamer {
 public:
  // count tensors of `bytes` each in pinned host memory; `slots` are the two device buffers.
  ResidualStreamer(Allocator& alloc, int count, std::size_t bytes, std::array<std::byte*, 2> slots);
  ~ResidualStreamer();
  ResidualStreamer(const ResidualStreamer&) = delete;
  ResidualStreamer& operator=(const ResidualStreamer&) = delete;

  void begin_write(int i, cudaStream_t compute);
  void end_write(int i, cudaStream_t compute);
  void fetch(int i, cudaStream_t compute);
  void prefetch(int i);  // no-op for i < 0 or while the slot is in use
  void release(int i, cudaStream_t compute);

 private:
  struct Slot {
    std::byte* data = nullptr;
    int holds = -1;                    // which residual the slot holds (or is receiving)
    bool in_use = false;               // between fetch / begin_write and release / end_write's reader
    cudaEvent_t written = nullptr;     // compute finished writing it (end_write)
    cudaEvent_t ready = nullptr;       // an upload into it finished
    cudaEvent_t copied = nullptr;      // its download to host memory finished
    cudaEvent_t released = nullptr;    // compute's last read of it finished
  };
  Slot& slot_of(int i);
  std::byte* host(int i) const;
  void upload(Slot& slot, int i);
  // The slot's previous contents are no longer needed by copies or compute.
  void wait_until_free(Slot& slot, cudaStream_t stream);

  int count_;
  std::size_t bytes_;
  std::byte* host_ = nullptr;
  std::array<Slot, 2> slots_;
  CopyStreams streams_;
};

}  // namespace llmq
