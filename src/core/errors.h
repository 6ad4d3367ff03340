// Error handling: every CUDA / cuBLAS / cuDNN / NCCL call goes through one of the CHECK macros,
// which throw llmq::Error with the failing expression, its location and the library's message.
#pragma once
#include <fmt/core.h>

#include <stdexcept>
#include <string>

namespace llmq {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

[[noreturn]] void throw_cuda_error(int code, const char* expr, const char* file, int line);
[[noreturn]] void throw_cublas_error(int code, const char* expr, const char* file, int line);
[[noreturn]] void throw_cudnn_error(int code, const char* expr, const char* file, int line);
[[noreturn]] void throw_nccl_error(int code, const char* expr, const char* file, int line);

namespace detail {
// nvcc's front end cannot evaluate fmt's compile-time format-string check, so CUDA translation
// units format at run time; host code keeps the compile-time check.
template <typename... Args>
std::string runtime_format(fmt::string_view format, const Args&... args) {
  return fmt::vformat(format, fmt::make_format_args(args...));
}
}  // namespace detail

}  // namespace llmq

#if defined(__CUDACC__)
#define LLMQ_FORMAT(...) ::llmq::detail::runtime_format(__VA_ARGS__)
#else
#define LLMQ_FORMAT(...) fmt::format(__VA_ARGS__)
#endif

#define LLMQ_CUDA_CHECK(expr)                                                            \
  do {                                                                                   \
    int llmq_status_ = static_cast<int>(expr);                                           \
    if (llmq_status_ != 0) ::llmq::throw_cuda_error(llmq_status_, #expr, __FILE__, __LINE__); \
  } while (0)
#define LLMQ_CUBLAS_CHECK(expr)                                                            \
  do {                                                                                     \
    int llmq_status_ = static_cast<int>(expr);                                             \
    if (llmq_status_ != 0) ::llmq::throw_cublas_error(llmq_status_, #expr, __FILE__, __LINE__); \
  } while (0)
#define LLMQ_CUDNN_CHECK(expr)                                                            \
  do {                                                                                    \
    int llmq_status_ = static_cast<int>(expr);                                            \
    if (llmq_status_ != 0) ::llmq::throw_cudnn_error(llmq_status_, #expr, __FILE__, __LINE__); \
  } while (0)
#define LLMQ_NCCL_CHECK(expr)                                                            \
  do {                                                                                   \
    int llmq_status_ = static_cast<int>(expr);                                           \
    if (llmq_status_ != 0) ::llmq::throw_nccl_error(llmq_status_, #expr, __FILE__, __LINE__); \
  } while (0)
// Checks the last kernel launch (a bad launch configuration is only reported here).
#define LLMQ_CUDA_CHECK_LAUNCH() LLMQ_CUDA_CHECK(cudaGetLastError())

// Throws llmq::Error with a formatted, user-actionable message when `cond` is false.
#define LLMQ_REQUIRE(cond, ...)                                  \
  do {                                                           \
    if (!(cond)) throw ::llmq::Error(LLMQ_FORMAT(__VA_ARGS__)); \
  } while (0)
