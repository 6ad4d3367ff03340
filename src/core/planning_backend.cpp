// Planning backend: see planning_backend.h.
#include "core/planning_backend.h"

#include <cstdint>

namespace llmq {

namespace {
class PlanningBackend final : public MemoryBackend {
 public:
  explicit PlanningBackend(std::size_t device_total) : device_total_(device_total) {}
  // Distinct, 256-byte aligned, never-dereferenced addresses: the Allocator keys its blocks by them.
  void* allocate(std::size_t bytes, MemKind) override {
    const std::uintptr_t address = next_;
    next_ += (bytes + 255) / 256 * 256 + 256;
    return reinterpret_cast<void*>(address);
  }
  void release(void*, MemKind) override {}
  std::size_t device_total_bytes() const override { return device_total_; }

 private:
  std::size_t device_total_;
  std::uintptr_t next_ = std::uintptr_t{1} << 44;  // far from anything real, so misuse faults
};
}  // namespace

std::unique_ptr<MemoryBackend> make_planning_backend(std::size_t device_total_bytes) {
  return std::make_unique<PlanningBackend>(device_total_bytes);
}

}  // namespace llmq
