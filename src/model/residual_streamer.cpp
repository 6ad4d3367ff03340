// ResidualStreamer: see residual_streamer.h.
#include "model/residual_streamer.h"

#include "core/errors.h"

namespace llmq {

ResidualStreamer::ResidualStreamer(Allocator& alloc, int count, std::size_t bytes, std::array<std::byte*, 2> slots)
    : count_(count), bytes_(bytes) {
  host_ = static_cast<std::byte*>(alloc.allocate_bytes("residual stream (offloaded)", bytes * count,
                                                       MemCategory::Activations, MemKind::Pinned));
  for (int s = 0; s < 2; ++s) {
    slots_[s].data = slots[s];
    for (cudaEvent_t* e : {&slots_[s].written, &slots_[s].ready, &slots_[s].copied, &slots_[s].released})
      LLMQ_CUDA_CHECK(cudaEventCreateWithFlags(e, cudaEventDisableTiming));
  }
}

ResidualStreamer::~ResidualStreamer() {
  // Never throws; streams_ waits for the copies still running when it goes.
  for (Slot& s : slots_)
    for (cudaEvent_t e : {s.written, s.ready, s.copied, s.released})
      if (e) cudaEventDestroy(e);
}

ResidualStreamer::Slot& ResidualStreamer::slot_of(int i) {
  LLMQ_REQUIRE(i >= 0 && i < count_, "internal error: residual {} out of range [0, {})", i, count_);
  return slots_[i % 2];
}

std::byte* ResidualStreamer::host(int i) const { return host_ + static_cast<std::size_t>(i) * bytes_; }

void ResidualStreamer::wait_until_free(Slot& slot, cudaStream_t stream) {
  for (cudaEvent_t e : {slot.ready, slot.copied, slot.released}) LLMQ_CUDA_CHECK(cudaStreamWaitEvent(stream, e, 0));
}

void ResidualStreamer::begin_write(int i, cudaStream_t compute) {
  Slot& slot = slot_of(i);
  wait_until_free(slot, compute);
  slot.holds = i;
  slot.in_use = true;
}

void ResidualStreamer::end_write(int i, cudaStream_t compute) {
  Slot& slot = slot_of(i);
  LLMQ_REQUIRE(slot.holds == i && slot.in_use, "internal error: end_write of residual {} without begin_write", i);
  LLMQ_CUDA_CHECK(cudaEventRecord(slot.written, compute));
  LLMQ_CUDA_CHECK(cudaStreamWaitEvent(streams_.download, slot.written, 0));
  LLMQ_CUDA_CHECK(cudaMemcpyAsync(host(i), slot.data, bytes_, cudaMemcpyDeviceToHost, streams_.download));
  LLMQ_CUDA_CHECK(cudaEventRecord(slot.copied, streams_.download));
  // Readers of residual[i] (the next layer) come later on `compute`, which orders them before the
  // write of residual[i+2] into this slot.
  slot.in_use = false;
}

void ResidualStreamer::upload(Slot& slot, int i) {
  wait_until_free(slot, streams_.upload);
  // Downloads run in order: everything enqueued so far includes residual[i]'s.
  LLMQ_CUDA_CHECK(cudaEventRecord(slot.copied, streams_.download));
  LLMQ_CUDA_CHECK(cudaStreamWaitEvent(streams_.upload, slot.copied, 0));
  LLMQ_CUDA_CHECK(cudaMemcpyAsync(slot.data, host(i), bytes_, cudaMemcpyHostToDevice, streams_.upload));
  LLMQ_CUDA_CHECK(cudaEventRecord(slot.ready, streams_.upload));
  slot.holds = i;
}

void ResidualStreamer::fetch(int i, cudaStream_t compute) {
  Slot& slot = slot_of(i);
  LLMQ_REQUIRE(!slot.in_use || slot.holds == i, "internal error: residual {}'s slot is in use by residual {}", i,
               slot.holds);
  if (slot.holds != i) upload(slot, i);
  slot.in_use = true;
  LLMQ_CUDA_CHECK(cudaStreamWaitEvent(compute, slot.ready, 0));
}

void ResidualStreamer::prefetch(int i) {
  if (i < 0 || i >= count_) return;
  Slot& slot = slot_of(i);
  if (slot.in_use || slot.holds == i) return;
  upload(slot, i);
}

void ResidualStreamer::release(int i, cudaStream_t compute) {
  Slot& slot = slot_of(i);
  LLMQ_REQUIRE(slot.holds == i && slot.in_use, "internal error: release of residual {} that is not in use", i);
  LLMQ_CUDA_CHECK(cudaEventRecord(slot.released, compute));
  slot.in_use = false;
}

}  // namespace llmq
