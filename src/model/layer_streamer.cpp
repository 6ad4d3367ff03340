// LayerStreamer: see layer_streamer.h.
#include "model/layer_streamer.h"

#include <fmt/format.h>

#include <algorithm>

#include "core/errors.h"

namespace llmq {

LayerStreamer::LayerStreamer(Allocator& alloc, const ParamStore& store, const ParamLayout& layout,
                             const std::string& name, MemCategory category)
    : store_(&store), layout_(&layout) {
  const std::size_t elem = dtype_size(store.dtype());
  for (int l = 0; l < layout.num_layers(); ++l) {
    std::int64_t begin = -1, end = -1, padded_total = 0;
    for (int id = 0; id < static_cast<int>(layout.params().size()); ++id) {
      if (layout.layer_of(id) != l || !store.offloaded(id)) continue;
      const std::int64_t padded = layout.padded_numel(id);
      const std::int64_t first = store.physical(layout[id].offset);
      begin = begin < 0 ? first : std::min(begin, first);
      end = std::max(end, first + padded);
      padded_total += padded;
    }
    if (begin < 0) begin = end = 0;
    LLMQ_REQUIRE(end - begin == padded_total,
                 "internal error: offloaded parameters of layer {} are not contiguous in host memory", l);
    first_element_.push_back(begin);
    std::byte* host = padded_total ? store.host_part().bytes_ptr() + begin * static_cast<std::int64_t>(elem) : nullptr;
    layers_.push_back({host, static_cast<std::size_t>(end - begin) * elem});
  }
  create_slots(alloc, name, category);
}

LayerStreamer::LayerStreamer(Allocator& alloc, std::vector<HostLayer> layers, const std::string& name,
                             MemCategory category)
    : layers_(std::move(layers)) {
  create_slots(alloc, name, category);
}

void LayerStreamer::create_slots(Allocator& alloc, const std::string& name, MemCategory category) {
  std::size_t largest = 0;
  for (const HostLayer& l : layers_) largest = std::max(largest, l.bytes);
  for (int s = 0; s < 2; ++s) {
    if (largest > 0)
      slots_[s].data = static_cast<std::byte*>(
          alloc.allocate_bytes(fmt::format("{} (layer slot {})", name, s), largest, category));
    LLMQ_CUDA_CHECK(cudaEventCreateWithFlags(&slots_[s].ready, cudaEventDisableTiming));
    LLMQ_CUDA_CHECK(cudaEventCreateWithFlags(&slots_[s].free, cudaEventDisableTiming));
  }
  LLMQ_CUDA_CHECK(cudaEventCreateWithFlags(&host_written_, cudaEventDisableTiming));
  LLMQ_CUDA_CHECK(cudaEventCreateWithFlags(&copies_done_, cudaEventDisableTiming));
}

LayerStreamer::~LayerStreamer() {
  // Never throws; streams_ waits for the copies still running when it goes.
  for (const Slot& s : slots_)
    for (cudaEvent_t e : {s.ready, s.free})
      if (e) cudaEventDestroy(e);
  for (cudaEvent_t e : {host_written_, copies_done_})
    if (e) cudaEventDestroy(e);
}

int LayerStreamer::slot_holding(int l) const {
  for (int s = 0; s < 2; ++s)
    if (slots_[s].layer == l) return s;
  return -1;
}

int LayerStreamer::free_slot() const {
  int found = -1;
  for (int s = 0; s < 2; ++s) {
    if (slots_[s].in_use) continue;
    if (slots_[s].layer < 0) return s;
    found = s;
  }
  return found;
}

void LayerStreamer::copy_in(int s, int l) {
  Slot& slot = slots_[s];
  LLMQ_CUDA_CHECK(cudaStreamWaitEvent(streams_.upload, slot.free, 0));
  LLMQ_CUDA_CHECK(cudaStreamWaitEvent(streams_.upload, host_written_, 0));
  if (layers_[l].bytes)
    LLMQ_CUDA_CHECK(cudaMemcpyAsync(slot.data, layers_[l].host, layers_[l].bytes, cudaMemcpyHostToDevice, streams_.upload));
  LLMQ_CUDA_CHECK(cudaEventRecord(slot.ready, streams_.upload));
  slot.layer = l;
}

void LayerStreamer::fetch(int l, cudaStream_t compute) {
  LLMQ_REQUIRE(l >= 0 && l < static_cast<int>(layers_.size()), "internal error: layer {} out of range", l);
  int s = slot_holding(l);
  if (s < 0) {
    s = free_slot();
    LLMQ_REQUIRE(s >= 0, "internal error: both layer slots are in use (fetch of layer {})", l);
    copy_in(s, l);
  }
  slots_[s].in_use = true;
  LLMQ_CUDA_CHECK(cudaStreamWaitEvent(compute, slots_[s].ready, 0));
}

void LayerStreamer::acquire_for_update(int l, bool from_host, cudaStream_t compute) {
  if (from_host) {
    fetch(l, compute);
    return;
  }
  LLMQ_REQUIRE(slot_holding(l) < 0, "internal error: layer {} is already in a slot", l);
  const int s = free_slot();
  LLMQ_REQUIRE(s >= 0, "internal error: both layer slots are in use (zeroed layer {})", l);
  Slot& slot = slots_[s];
  LLMQ_CUDA_CHECK(cudaStreamWaitEvent(compute, slot.free, 0));
  if (layers_[l].bytes) LLMQ_CUDA_CHECK(cudaMemsetAsync(slot.data, 0, layers_[l].bytes, compute));
  slot.layer = l;
  slot.in_use = true;
}

void LayerStreamer::prefetch(int l) {
  if (l < 0 || l >= static_cast<int>(layers_.size()) || slot_holding(l) >= 0) return;
  const int s = free_slot();
  if (s >= 0) copy_in(s, l);
}

void LayerStreamer::release(int l, cudaStream_t compute) {
  const int s = slot_holding(l);
  LLMQ_REQUIRE(s >= 0 && slots_[s].in_use, "internal error: release of layer {} that is not in use", l);
  LLMQ_CUDA_CHECK(cudaEventRecord(slots_[s].free, compute));
  slots_[s].in_use = false;
}

void LayerStreamer::write_back(int l, cudaStream_t compute) {
  const int s = slot_holding(l);
  LLMQ_REQUIRE(s >= 0 && slots_[s].in_use, "internal error: write-back of layer {} that is not in use", l);
  Slot& slot = slots_[s];
  LLMQ_CUDA_CHECK(cudaEventRecord(slot.ready, compute));  // "compute is done with the slot"
  LLMQ_CUDA_CHECK(cudaStreamWaitEvent(streams_.download, slot.ready, 0));
  if (layers_[l].bytes)
    LLMQ_CUDA_CHECK(cudaMemcpyAsync(layers_[l].host, slot.data, layers_[l].bytes, cudaMemcpyDeviceToHost, streams_.download));
  LLMQ_CUDA_CHECK(cudaEventRecord(slot.free, streams_.download));
  slot.layer = -1;
  slot.in_use = false;
}

void LayerStreamer::invalidate(cudaStream_t compute) {
  for (Slot& s : slots_) {
    LLMQ_REQUIRE(!s.in_use, "internal error: host copy changed while layer {} is in use", s.layer);
    s.layer = -1;
  }
  LLMQ_CUDA_CHECK(cudaEventRecord(host_written_, compute));
}

void LayerStreamer::synchronize_into(cudaStream_t compute) {
  for (cudaStream_t s : {streams_.upload, streams_.download}) {
    LLMQ_CUDA_CHECK(cudaEventRecord(copies_done_, s));
    LLMQ_CUDA_CHECK(cudaStreamWaitEvent(compute, copies_done_, 0));
  }
}

std::byte* LayerStreamer::device_ptr(int param) const {
  LLMQ_REQUIRE(store_ && store_->offloaded(param), "internal error: parameter {} is not streamed", param);
  const int l = layout_->layer_of(param);
  const std::int64_t offset = store_->physical((*layout_)[param].offset) - first_element_[l];
  return slot_data(l) + offset * static_cast<std::int64_t>(dtype_size(store_->dtype()));
}

std::byte* LayerStreamer::slot_data(int l) const {
  const int s = l >= 0 ? slot_holding(l) : -1;
  LLMQ_REQUIRE(s >= 0 && slots_[s].in_use, "internal error: layer {} is not in a layer slot", l);
  return slots_[s].data;
}

}  // namespace llmq
