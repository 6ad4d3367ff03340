// CopyStreams: the two copy streams of a streamer (host to device, device to host), non-blocking,
// so that uploads and write-backs overlap each other and the compute stream.
#pragma once
#include <cuda_runtime.h>

#include "core/errors.h"

namespace llmq {

struct CopyStreams {
  CopyStreams() {
    LLMQ_CUDA_CHECK(cudaStreamCreateWithFlags(&upload, cudaStreamNonBlocking));
    LLMQ_CUDA_CHECK(cudaStreamCreateWithFlags(&download, cudaStreamNonBlocking));
  }
  // Waits for both, then destroys them. Never throws: they may hold work of a step that failed half-way.
  ~CopyStreams() {
    for (cudaStream_t s : {upload, download}) {
      if (!s) continue;
      cudaStreamSynchronize(s);
      cudaStreamDestroy(s);
    }
  }
  CopyStreams(const CopyStreams&) = delete;
  CopyStreams& operator=(const CopyStreams&) = delete;

  cudaStream_t upload = nullptr, download = nullptr;
};

}  // namespace llmq
