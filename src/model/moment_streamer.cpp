// MomentStreamer: see moment_streamer.h for the three modes and the double-buffered pipeline.
#include "model/moment_streamer.h"

#include <algorithm>

#include "core/errors.h"

namespace llmq {

MomentStreamer::MomentStreamer(Allocator& alloc, const Tensor& m, const Tensor& v, bool zero_copy,
                               std::int64_t chunk_elements)
    : total_(m.numel()) {
  LLMQ_REQUIRE(m.numel() == v.numel(), "internal error: Adam m has {} elements, v has {}", m.numel(), v.numel());
  LLMQ_REQUIRE(chunk_elements >= 0, "offload chunk of {} elements: must be >= 0 (0 = automatic)", chunk_elements);
  m_.tensor = m;
  v_.tensor = v;
  const bool any_offloaded = m.location == Location::Host || v.location == Location::Host;
  streamed_ = any_offloaded && !zero_copy;
  if (!streamed_) {
    chunk_ = total_;
    return;
  }
  chunk_ = std::min(chunk_elements > 0 ? chunk_elements : kDefaultChunkElements, total_);
  for (Moment* moment : {&m_, &v_}) {
    moment->staged = moment->tensor.location == Location::Host;
    if (!moment->staged) continue;
    for (int b = 0; b < 2; ++b)
      moment->staging[b] = alloc.allocate(moment == &m_ ? "adam m staging" : "adam v staging", moment->tensor.dtype,
                                          {chunk_}, MemCategory::Workspace);
  }
  LLMQ_CUDA_CHECK(cudaStreamCreateWithFlags(&upload_stream_, cudaStreamNonBlocking));
  LLMQ_CUDA_CHECK(cudaStreamCreateWithFlags(&download_stream_, cudaStreamNonBlocking));
  LLMQ_CUDA_CHECK(cudaEventCreateWithFlags(&start_, cudaEventDisableTiming));
  for (auto* events : {&uploaded_, &updated_, &downloaded_})
    for (cudaEvent_t& e : *events) LLMQ_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
}

MomentStreamer::~MomentStreamer() {
  // Never throws: streams may hold work of a step that failed half-way.
  for (cudaStream_t s : {upload_stream_, download_stream_}) {
    if (!s) continue;
    cudaStreamSynchronize(s);
    cudaStreamDestroy(s);
  }
  if (start_) cudaEventDestroy(start_);
  for (auto* events : {&uploaded_, &updated_, &downloaded_})
    for (cudaEvent_t e : *events)
      if (e) cudaEventDestroy(e);
}

void MomentStreamer::for_each_chunk(cudaStream_t compute, const ChunkUpdate& update) {
  if (total_ == 0) return;
  if (streamed_)
    stream_chunks(compute, update);
  else
    update(0, total_, m_.tensor.data, v_.tensor.data);
}

void MomentStreamer::copy_chunk(const Moment& moment, int buffer, std::int64_t begin, std::int64_t end,
                                bool to_device, cudaStream_t stream) const {
  const std::size_t bytes = static_cast<std::size_t>(end - begin) * dtype_size(moment.tensor.dtype);
  void* host = moment.at(begin);
  void* device = moment.staging[buffer].data;
  if (to_device)
    LLMQ_CUDA_CHECK(cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, stream));
  else
    LLMQ_CUDA_CHECK(cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, stream));
}

void MomentStreamer::stream_chunks(cudaStream_t compute, const ChunkUpdate& update) {
  // Host moments may have been written by earlier work on `compute` (or by the host before it).
  LLMQ_CUDA_CHECK(cudaEventRecord(start_, compute));
  LLMQ_CUDA_CHECK(cudaStreamWaitEvent(upload_stream_, start_, 0));
  int chunk = 0;
  for (std::int64_t begin = 0; begin < total_; begin += chunk_, ++chunk) {
    const std::int64_t end = std::min(begin + chunk_, total_);
    const int b = chunk % 2;
    // Buffer b is free once the download of chunk - 2 has read it (a never-recorded event is complete).
    LLMQ_CUDA_CHECK(cudaStreamWaitEvent(upload_stream_, downloaded_[b], 0));
    for (const Moment* moment : {&m_, &v_})
      if (moment->staged) copy_chunk(*moment, b, begin, end, /*to_device=*/true, upload_stream_);
    LLMQ_CUDA_CHECK(cudaEventRecord(uploaded_[b], upload_stream_));

    LLMQ_CUDA_CHECK(cudaStreamWaitEvent(compute, uploaded_[b], 0));
    update(begin, end, m_.staged ? m_.staging[b].data : m_.at(begin), v_.staged ? v_.staging[b].data : v_.at(begin));
    LLMQ_CUDA_CHECK(cudaEventRecord(updated_[b], compute));

    LLMQ_CUDA_CHECK(cudaStreamWaitEvent(download_stream_, updated_[b], 0));
    for (const Moment* moment : {&m_, &v_})
      if (moment->staged) copy_chunk(*moment, b, begin, end, /*to_device=*/false, download_stream_);
    LLMQ_CUDA_CHECK(cudaEventRecord(downloaded_[b], download_stream_));
  }
  // The download stream runs in order: its last event covers every copy back.
  LLMQ_CUDA_CHECK(cudaStreamWaitEvent(compute, downloaded_[(chunk - 1) % 2], 0));
}

}  // namespace llmq
