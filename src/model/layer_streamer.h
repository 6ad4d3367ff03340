// LayerStreamer: device copies, one transformer layer at a time, of the offloaded parameters of a
// ParamStore (block matrices in pinned host memory with --offload-master / --offload-gradients).
//
// Two slots, each as large as the biggest layer's offloaded part. Copies run on their own streams
// (one per direction, so uploads and write-backs overlap) and are ordered against the compute
// stream with events:
//   fetch(l)          compute waits until layer l is in a slot (copying it first if no slot holds it)
//   prefetch(l)       start copying layer l into the slot nobody uses, after that slot's last use
//   release(l)        work enqueued on compute so far is the last use of l's slot
//   write_back(l)     (gradients) copy the slot back to host memory once compute's work so far is
//                     done; the slot is free when that copy is
//   invalidate(compute)  (weights) the host copy changed: later copies wait for compute's work so far
// Forward: fetch(l), prefetch(l+1), work, release(l): layer l+1's copy overlaps layer l's work.
// Backward likewise with l-1. A slot that still holds a layer is reused without copying (the last
// forward layer is the first backward layer) until invalidate() (the host copy changed).
#pragma once
#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "core/allocator.h"
#include "model/copy_streams.h"
#include "model/param_store.h"

namespace llmq {

class LayerStreamer {
 public:
  // The offloaded parameters of each layer of `store`.
  LayerStreamer(Allocator& alloc, const ParamStore& store, const ParamLayout& layout, const std::string& name,
                MemCategory category);
  // Any per-layer host data: layer l is `layers[l].bytes` bytes at `layers[l].host` (pinned memory).
  struct HostLayer {
    std::byte* host = nullptr;
    std::size_t bytes = 0;
  };
  LayerStreamer(Allocator& alloc, std::vector<HostLayer> layers, const std::string& name, MemCategory category);
  ~LayerStreamer();
  LayerStreamer(const LayerStreamer&) = delete;
  LayerStreamer& operator=(const LayerStreamer&) = delete;

  // Read-only use: layer l's offloaded parameters are on the device for compute work enqueued next.
  void fetch(int l, cudaStream_t compute);
  // Read-write use: the slot starts as the host values (from_host) or as zeros.
  void acquire_for_update(int l, bool from_host, cudaStream_t compute);
  // Starts copying layer l (a no-op when l is out of range or a slot holds it or no slot is free).
  void prefetch(int l);
  void release(int l, cudaStream_t compute);
  void write_back(int l, cudaStream_t compute);
  // The host copy changed (by work on `compute` so far, e.g. the optimizer): slots hold nothing
  // valid any more, and later copies wait for that work.
  void invalidate(cudaStream_t compute);
  // Work enqueued on `compute` from now on runs after every copy this streamer started (the host
  // copy of written-back gradients is complete).
  void synchronize_into(cudaStream_t compute);

  // Device address of an offloaded parameter of a layer that is in a slot (store constructor only).
  std::byte* device_ptr(int param) const;
  // Device address of layer l's data; l must be in a slot.
  std::byte* slot_data(int l) const;

 private:
  struct Slot {
    std::byte* data = nullptr;
    int layer = -1;       // whose values the slot holds (or is receiving); -1: none
    bool in_use = false;  // between fetch/acquire and release/write_back
    cudaEvent_t ready = nullptr;  // the copy into the slot is done
    cudaEvent_t free = nullptr;   // the slot's last reader (compute or a write-back) is done
  };
  void create_slots(Allocator& alloc, const std::string& name, MemCategory category);
  int slot_holding(int l) const;
  int free_slot() const;  // a slot not in use, preferring one that holds no layer; -1 if none
  void copy_in(int s, int l);

  const ParamStore* store_ = nullptr;    // store constructor only
  const ParamLayout* layout_ = nullptr;
  std::vector<std::int64_t> first_element_;  // store constructor: physical host element where layer l starts
  std::vector<HostLayer> layers_;
  std::array<Slot, 2> slots_;
  CopyStreams streams_;
  cudaEvent_t host_written_ = nullptr, copies_done_ = nullptr;
};

}  // namespace llmq
