// StateStreamer: see state_streamer.h for the three modes and the double-buffered pipeline.
#include "model/state_streamer.h"

#include <algorithm>

#include "core/errors.h"

namespace llmq {

StateStreamer::StateStreamer(Allocator& alloc, std::vector<Role> roles, bool zero_copy, std::int64_t chunk_elements) {
  LLMQ_REQUIRE(!roles.empty(), "internal error: no optimizer state to stream");
  LLMQ_REQUIRE(chunk_elements >= 0, "offload chunk of {} elements: must be >= 0 (0 = automatic)", chunk_elements);
  total_ = roles.front().store->size();
  for (const Role& r : roles) {
    LLMQ_REQUIRE(r.store->size() == total_, "internal error: optimizer state of {} and {} elements", total_,
                 r.store->size());
    Staged s;
    s.role = r;
    s.staged = r.store->any_offloaded() && !zero_copy;
    streamed_ = streamed_ || s.staged;
    roles_.push_back(s);
  }
  if (!streamed_) {
    chunk_ = total_;
    return;
  }
  chunk_ = std::min(chunk_elements > 0 ? chunk_elements : kDefaultChunkElements, total_);
  for (Staged& s : roles_) {
    if (!s.staged) continue;
    for (int b = 0; b < 2; ++b)
      s.staging[b] = alloc.allocate(fmt::format("optimizer staging {}", b), s.role.store->dtype(), {chunk_},
                                    MemCategory::Workspace);
  }
  LLMQ_CUDA_CHECK(cudaEventCreateWithFlags(&start_, cudaEventDisableTiming));
  for (auto* events : {&uploaded_, &updated_, &downloaded_})
    for (cudaEvent_t& e : *events) LLMQ_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
}

StateStreamer::~StateStreamer() {
  // Never throws; streams_ waits for the copies still running when it goes.
  if (start_) cudaEventDestroy(start_);
  for (auto* events : {&uploaded_, &updated_, &downloaded_})
    for (cudaEvent_t e : *events)
      if (e) cudaEventDestroy(e);
}

std::int64_t StateStreamer::chunk_end(std::int64_t begin) const {
  std::int64_t end = std::min(begin + chunk_, total_);
  for (const Staged& s : roles_) end = std::min(end, s.role.store->segment_end(begin));
  return end;
}

void StateStreamer::copy_chunk(const Staged& s, int buffer, std::int64_t begin, std::int64_t end, bool to_device,
                               cudaStream_t stream) const {
  const std::size_t bytes = static_cast<std::size_t>(end - begin) * dtype_size(s.role.store->dtype());
  void* host = s.role.store->at(begin);
  void* device = s.staging[buffer].data;
  if (to_device)
    LLMQ_CUDA_CHECK(cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, stream));
  else
    LLMQ_CUDA_CHECK(cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, stream));
}

void StateStreamer::for_each_chunk(cudaStream_t compute, const ChunkUpdate& update) {
  std::vector<void*> pointers(roles_.size());
  if (!streamed_) {
    for (std::int64_t begin = 0; begin < total_;) {
      const std::int64_t end = chunk_end(begin);
      for (std::size_t r = 0; r < roles_.size(); ++r) pointers[r] = roles_[r].role.store->at(begin);
      update(begin, end, pointers);
      begin = end;
    }
    return;
  }
  // Host state may have been written by earlier work on `compute` (or by the host before it).
  LLMQ_CUDA_CHECK(cudaEventRecord(start_, compute));
  LLMQ_CUDA_CHECK(cudaStreamWaitEvent(streams_.upload, start_, 0));
  int chunk = 0;
  for (std::int64_t begin = 0; begin < total_; ++chunk) {
    const std::int64_t end = chunk_end(begin);
    const int b = chunk % 2;
    // Which roles of this chunk go through staging buffers (those whose elements are in host memory).
    auto staged_here = [&](const Staged& s) { return s.staged && s.role.store->on_host(begin); };
    // Buffer b is free once the download of chunk - 2 has read it (a never-recorded event is complete).
    LLMQ_CUDA_CHECK(cudaStreamWaitEvent(streams_.upload, downloaded_[b], 0));
    for (const Staged& s : roles_)
      if (staged_here(s)) copy_chunk(s, b, begin, end, /*to_device=*/true, streams_.upload);
    LLMQ_CUDA_CHECK(cudaEventRecord(uploaded_[b], streams_.upload));

    LLMQ_CUDA_CHECK(cudaStreamWaitEvent(compute, uploaded_[b], 0));
    for (std::size_t r = 0; r < roles_.size(); ++r)
      pointers[r] = staged_here(roles_[r]) ? roles_[r].staging[b].data : roles_[r].role.store->at(begin);
    update(begin, end, pointers);
    LLMQ_CUDA_CHECK(cudaEventRecord(updated_[b], compute));

    LLMQ_CUDA_CHECK(cudaStreamWaitEvent(streams_.download, updated_[b], 0));
    for (const Staged& s : roles_)
      if (staged_here(s) && s.role.written) copy_chunk(s, b, begin, end, /*to_device=*/false, streams_.download);
    LLMQ_CUDA_CHECK(cudaEventRecord(downloaded_[b], streams_.download));
    begin = end;
  }
  // The download stream runs in order: its last event covers every copy back.
  LLMQ_CUDA_CHECK(cudaStreamWaitEvent(compute, downloaded_[(chunk - 1) % 2], 0));
}

}  // namespace llmq
