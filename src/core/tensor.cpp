#include "core/tensor.h"

#include <fmt/format.h>

namespace llmq {

Tensor::Tensor(void* data_, DType dtype_, std::initializer_list<std::int64_t> dims, Location where)
    : data(data_), dtype(dtype_), location(where) {
  LLMQ_REQUIRE(dims.size() <= kMaxRank, "tensor rank {} exceeds the maximum of {}", dims.size(), kMaxRank);
  for (std::int64_t d : dims) {
    LLMQ_REQUIRE(d >= 0, "tensor dimension {} is negative", d);
    shape[rank++] = d;
  }
}

std::int64_t Tensor::numel() const {
  std::int64_t n = 1;
  for (int i = 0; i < rank; ++i) n *= shape[i];
  return n;
}

std::int64_t Tensor::size(int dim) const {
  int d = dim < 0 ? rank + dim : dim;
  LLMQ_REQUIRE(d >= 0 && d < rank, "dimension {} out of range for {}", dim, describe());
  return shape[d];
}

Tensor Tensor::slice_rows(std::int64_t begin, std::int64_t end) const {
  LLMQ_REQUIRE(rank >= 1 && 0 <= begin && begin <= end && end <= shape[0], "rows [{}, {}) out of range for {}", begin,
               end, describe());
  Tensor out = *this;
  std::int64_t row_elems = numel() / (shape[0] == 0 ? 1 : shape[0]);
  out.data = bytes_ptr() + begin * row_elems * static_cast<std::int64_t>(dtype_size(dtype));
  out.shape[0] = end - begin;
  return out;
}

Tensor Tensor::reshaped(std::initializer_list<std::int64_t> dims) const {
  Tensor out(data, dtype, dims, location);
  out.scale = scale;
  LLMQ_REQUIRE(out.numel() == numel(), "cannot view {} as {}", describe(), out.shape_string());
  return out;
}

std::string Tensor::shape_string() const {
  std::string s = "[";
  for (int i = 0; i < rank; ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string Tensor::describe() const {
  return fmt::format("{}{} on {}", dtype_name(dtype), shape_string(), location == Location::Device ? "device" : "host");
}

}  // namespace llmq
