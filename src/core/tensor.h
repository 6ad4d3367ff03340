// Tensor: a non-owning view of memory (device or host) with a dtype and a row-major shape of up to
// four dimensions. FP8 tensors carry a pointer to their float32 scale on the same device.
// Memory is owned by the Allocator; a Tensor is cheap to copy.
#pragma once
#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "core/dtype.h"
#include "core/errors.h"

namespace llmq {

enum class Location : std::uint8_t { Device, Host };

struct Tensor {
  static constexpr int kMaxRank = 4;

  void* data = nullptr;
  DType dtype = DType::FP32;
  int rank = 0;
  std::array<std::int64_t, kMaxRank> shape{};
  Location location = Location::Device;
  float* scale = nullptr;  // FP8 only: dequantised value = stored value * (*scale)

  Tensor() = default;
  Tensor(void* data, DType dtype, std::initializer_list<std::int64_t> dims, Location where = Location::Device);

  std::int64_t numel() const;
  std::size_t bytes() const { return static_cast<std::size_t>(numel()) * dtype_size(dtype); }
  std::int64_t size(int dim) const;  // negative dims count from the back
  bool empty() const { return data == nullptr; }

  // Typed pointer; throws if T's size does not match the dtype's element size.
  template <typename T>
  T* get() const {
    LLMQ_REQUIRE(sizeof(T) == dtype_size(dtype), "tensor {}: element type of size {} requested", describe(), sizeof(T));
    return static_cast<T*>(data);
  }
  std::byte* bytes_ptr() const { return static_cast<std::byte*>(data); }

  // Rows [begin, end) of the leading dimension, as a view.
  Tensor slice_rows(std::int64_t begin, std::int64_t end) const;
  // Same memory seen with another shape of the same element count.
  Tensor reshaped(std::initializer_list<std::int64_t> dims) const;

  std::string shape_string() const;  // "[4, 1024, 896]"
  std::string describe() const;      // "bf16[4, 1024, 896] on device"
};

}  // namespace llmq
