// ParamStore: one role (weights, gradients, Adam m or Adam v) of every parameter, addressed by the
// element offsets of the flat ParamLayout [0, P), but physically split between two buffers: one on
// the device and one in pinned host memory (--offload-master / --offload-gradients / --offload-opt-*).
//
// Each parameter lives wholly in one buffer. Consecutive parameters with the same placement form a
// segment; a segment is contiguous in its buffer (alignment padding included), so a range of
// elements that stays inside one segment is one pointer, one copy, one kernel launch. Physical
// offsets keep the layout's 128-element alignment, so vector access works in both buffers.
//
//   logical  [emb | ln1 qkv_w qkv_b att_w ln2 up down | ... | final_norm | lm_head]
//   device    emb   ln1       qkv_b       ln2          ...   final_norm   lm_head
//   host               qkv_w        att_w      up down ...            (offloaded matrices)
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/allocator.h"
#include "core/tensor.h"
#include "model/param_layout.h"

namespace llmq {

class ParamStore {
 public:
  // offloaded[i]: parameter i lives in host memory of kind `host_kind` (Pinned or WriteCombined).
  ParamStore(Allocator& alloc, const std::string& name, DType dtype, MemCategory category, const ParamLayout& layout,
             const std::vector<bool>& offloaded, MemKind host_kind = MemKind::Pinned);

  DType dtype() const { return dtype_; }
  std::int64_t size() const { return total_; }  // P
  bool any_offloaded() const { return !host_.empty(); }
  bool all_offloaded() const { return device_.empty(); }
  bool offloaded(int param) const { return offloaded_.at(param); }

  // Address of logical element `element` (device or host memory); valid up to segment_end(element).
  std::byte* at(std::int64_t element) const;
  bool on_host(std::int64_t element) const { return segment(element).on_host; }
  std::int64_t segment_end(std::int64_t element) const { return segment(element).end; }
  // Position of logical element `element` inside its buffer (elements).
  std::int64_t physical(std::int64_t element) const;
  std::byte* param_ptr(int param) const { return at((*layout_)[param].offset); }

  const Tensor& device_part() const { return device_; }  // empty when everything is offloaded
  const Tensor& host_part() const { return host_; }      // empty when nothing is

  // Zeroes both buffers (host part with memset, after `stream` finished).
  void zero(cudaStream_t stream) const;
  // Whole contents in logical order (checkpoints, export); synchronises `stream` first.
  std::vector<std::byte> download(cudaStream_t stream) const;
  // Replaces the contents from logical-order bytes (size() elements of dtype()).
  void upload(const std::byte* logical, cudaStream_t stream) const;

 private:
  struct Segment {
    std::int64_t begin = 0, end = 0;  // logical elements
    bool on_host = false;
    std::int64_t physical_begin = 0;  // element offset of `begin` inside its buffer
  };
  const Segment& segment(std::int64_t element) const;
  template <typename F>
  void for_each_segment_copy(F&& copy) const;

  const ParamLayout* layout_;
  DType dtype_;
  std::int64_t total_ = 0;
  std::vector<bool> offloaded_;
  std::vector<Segment> segments_;
  Tensor device_, host_;
};

}  // namespace llmq
