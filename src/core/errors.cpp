#include "core/errors.h"

#include <cublasLt.h>
#include <cuda_runtime.h>
#include <cudnn.h>
#include <nccl.h>

namespace llmq {

namespace {
[[noreturn]] void fail(const char* library, int code, const char* message, const char* expr, const char* file,
                       int line) {
  throw Error(fmt::format("{} error {} ({}) in `{}` at {}:{}", library, code, message, expr, file, line));
}
}  // namespace

void throw_cuda_error(int code, const char* expr, const char* file, int line) {
  auto err = static_cast<cudaError_t>(code);
  std::string message = cudaGetErrorString(err);
  if (err == cudaErrorMemoryAllocation)
    message += "; the GPU is out of memory: lower --batch-size, add --recompute-* / --offload-* flags or raise --memory-limit";
  else if (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver)
    message += "; llmq needs an NVIDIA GPU with a working driver (check `nvidia-smi`)";
  fail("CUDA", code, message.c_str(), expr, file, line);
}

void throw_cublas_error(int code, const char* expr, const char* file, int line) {
  // cublasGetStatusString lives in libcublas, which llmq does not otherwise need.
  const char* message = "unknown status";
  switch (static_cast<cublasStatus_t>(code)) {
    case CUBLAS_STATUS_NOT_INITIALIZED: message = "not initialized"; break;
    case CUBLAS_STATUS_ALLOC_FAILED: message = "allocation failed"; break;
    case CUBLAS_STATUS_INVALID_VALUE: message = "invalid value"; break;
    case CUBLAS_STATUS_ARCH_MISMATCH: message = "not supported by this GPU architecture"; break;
    case CUBLAS_STATUS_MAPPING_ERROR: message = "mapping error"; break;
    case CUBLAS_STATUS_EXECUTION_FAILED: message = "execution failed"; break;
    case CUBLAS_STATUS_INTERNAL_ERROR: message = "internal error"; break;
    case CUBLAS_STATUS_NOT_SUPPORTED: message = "not supported"; break;
    default: break;
  }
  fail("cuBLAS", code, message, expr, file, line);
}

void throw_cudnn_error(int code, const char* expr, const char* file, int line) {
  fail("cuDNN", code, cudnnGetErrorString(static_cast<cudnnStatus_t>(code)), expr, file, line);
}

void throw_nccl_error(int code, const char* expr, const char* file, int line) {
  fail("NCCL", code, ncclGetErrorString(static_cast<ncclResult_t>(code)), expr, file, line);
}

}  // namespace llmq
