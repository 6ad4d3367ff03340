// ParamStore: see param_store.h.
#include "model/param_store.h"

#include <algorithm>
#include <cstring>

#include "core/errors.h"

namespace llmq {

ParamStore::ParamStore(Allocator& alloc, const std::string& name, DType dtype, MemCategory category,
                       const ParamLayout& layout, const std::vector<bool>& offloaded, MemKind host_kind)
    : layout_(&layout), dtype_(dtype), total_(layout.total_elements()), offloaded_(offloaded) {
  const std::vector<ParamSpec>& params = layout.params();
  LLMQ_REQUIRE(offloaded.size() == params.size(), "internal error: {} placements for {} parameters",
               offloaded.size(), params.size());
  LLMQ_REQUIRE(host_kind == MemKind::Pinned || host_kind == MemKind::WriteCombined,
               "internal error: offloaded parameters need pinned host memory");
  std::int64_t used[2] = {0, 0};  // elements of the device / host buffer
  for (std::size_t i = 0; i < params.size(); ++i) {
    const std::int64_t begin = params[i].offset;
    const std::int64_t end = begin + layout.padded_numel(static_cast<int>(i));
    const bool host = offloaded[i];
    if (!segments_.empty() && segments_.back().on_host == host) {
      segments_.back().end = end;
    } else {
      segments_.push_back(Segment{begin, end, host, used[host]});
    }
    used[host] += end - begin;
  }
  if (used[0]) device_ = alloc.allocate(name, dtype, {used[0]}, category);
  if (used[1]) host_ = alloc.allocate(name + " (offloaded)", dtype, {used[1]}, category, host_kind);
}

const ParamStore::Segment& ParamStore::segment(std::int64_t element) const {
  LLMQ_REQUIRE(element >= 0 && element < total_, "internal error: element {} outside [0, {})", element, total_);
  auto it = std::upper_bound(segments_.begin(), segments_.end(), element,
                             [](std::int64_t e, const Segment& s) { return e < s.begin; });
  return *(it - 1);
}

std::int64_t ParamStore::physical(std::int64_t element) const {
  const Segment& s = segment(element);
  return s.physical_begin + (element - s.begin);
}

std::byte* ParamStore::at(std::int64_t element) const {
  const Segment& s = segment(element);
  const Tensor& buffer = s.on_host ? host_ : device_;
  return buffer.bytes_ptr() + (s.physical_begin + (element - s.begin)) * static_cast<std::int64_t>(dtype_size(dtype_));
}

void ParamStore::zero(cudaStream_t stream) const {
  if (!device_.empty()) LLMQ_CUDA_CHECK(cudaMemsetAsync(device_.data, 0, device_.bytes(), stream));
  if (!host_.empty()) {
    LLMQ_CUDA_CHECK(cudaStreamSynchronize(stream));
    std::memset(host_.data, 0, host_.bytes());
  }
}

// copy(logical byte offset, buffer pointer, bytes) for every segment.
template <typename F>
void ParamStore::for_each_segment_copy(F&& copy) const {
  const auto elem = static_cast<std::int64_t>(dtype_size(dtype_));
  for (const Segment& s : segments_) {
    const Tensor& buffer = s.on_host ? host_ : device_;
    copy(s.begin * elem, buffer.bytes_ptr() + s.physical_begin * elem, static_cast<std::size_t>((s.end - s.begin) * elem));
  }
}

std::vector<std::byte> ParamStore::download(cudaStream_t stream) const {
  LLMQ_CUDA_CHECK(cudaStreamSynchronize(stream));
  std::vector<std::byte> out(static_cast<std::size_t>(total_) * dtype_size(dtype_));
  for_each_segment_copy([&](std::int64_t offset, const std::byte* src, std::size_t bytes) {
    LLMQ_CUDA_CHECK(cudaMemcpy(out.data() + offset, src, bytes, cudaMemcpyDefault));
  });
  return out;
}

void ParamStore::upload(const std::byte* logical, cudaStream_t stream) const {
  LLMQ_CUDA_CHECK(cudaStreamSynchronize(stream));  // nothing may still read what is replaced
  for_each_segment_copy([&](std::int64_t offset, std::byte* dst, std::size_t bytes) {
    LLMQ_CUDA_CHECK(cudaMemcpy(dst, logical + offset, bytes, cudaMemcpyDefault));
  });
}

}  // namespace llmq
