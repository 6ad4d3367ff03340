// Allocator: every byte llmq places on the GPU or in pinned host memory goes through here, tagged
// with a category, so that `[Allocator State]` can say where memory went and `--memory-limit`
// can be honoured exactly. Library workspaces (cuBLASLt, cuDNN) are allocated here too.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "core/errors.h"
#include "core/tensor.h"

namespace llmq {

enum class MemCategory : std::uint8_t {
  Weights, Master, Gradients, AdamM, AdamV, Activations, Quants, Workspace, Other, kCount
};
inline constexpr std::size_t kMemCategoryCount = static_cast<std::size_t>(MemCategory::kCount);
std::string_view category_name(MemCategory c);

// Per category: the flags that would make it smaller, e.g. "--offload-opt-m or --opt-m-dtype=bf16"
// ("" when none). The core does not know the command line; the model registers these.
using ShrinkHints = std::array<std::string, kMemCategoryCount>;

// Device: GPU memory. Pinned: page-locked host memory. WriteCombined: pinned, write-combined
// (fast host->device, very slow host reads). Host: ordinary pageable memory.
enum class MemKind : std::uint8_t { Device, Pinned, WriteCombined, Host, kCount };
std::string_view kind_name(MemKind k);

// Where bytes physically come from; the CUDA backend is the default, tests inject fakes.
class MemoryBackend {
 public:
  virtual ~MemoryBackend() = default;
  virtual void* allocate(std::size_t bytes, MemKind kind) = 0;  // nullptr when out of memory
  virtual void release(void* ptr, MemKind kind) = 0;
  virtual std::size_t device_total_bytes() const = 0;
};
std::unique_ptr<MemoryBackend> make_cuda_backend();

class OutOfMemory : public Error {
 public:
  using Error::Error;
};

// Parses "16GiB", "24GB", "512MiB", "1.5GiB", "8192" (bytes). Throws Error on anything else.
std::size_t parse_byte_size(const std::string& text);
std::string format_bytes(std::size_t bytes);  // "1.50 GiB", "12.0 MiB", "512 B"

class Allocator {
 public:
  // device_budget: at most this many device bytes may be live at once (nullopt: the GPU's size).
  explicit Allocator(std::optional<std::size_t> device_budget = std::nullopt,
                     std::unique_ptr<MemoryBackend> backend = make_cuda_backend());
  ~Allocator();
  Allocator(const Allocator&) = delete;
  Allocator& operator=(const Allocator&) = delete;

  Tensor allocate(const std::string& name, DType dtype, std::initializer_list<std::int64_t> shape,
                  MemCategory category, MemKind kind = MemKind::Device);
  void* allocate_bytes(const std::string& name, std::size_t bytes, MemCategory category,
                       MemKind kind = MemKind::Device);
  void release(void* ptr);
  void release(const Tensor& t) { release(t.data); }

  std::size_t in_use(MemCategory category, MemKind kind) const;
  std::size_t device_in_use() const;
  std::size_t device_peak() const { return device_peak_; }
  std::optional<std::size_t> device_budget() const { return budget_; }

  // Text that an OutOfMemory message shows next to each category it lists (see ShrinkHints).
  void set_shrink_hints(ShrinkHints hints);

  // The `[Allocator State]` table: device bytes per category, free budget, host-side totals.
  std::string state_report() const;

 private:
  struct Block {
    std::string name;
    std::size_t bytes;
    MemCategory category;
    MemKind kind;
  };
  std::unique_ptr<MemoryBackend> backend_;
  std::optional<std::size_t> budget_;
  mutable std::mutex mutex_;
  std::unordered_map<void*, Block> blocks_;
  std::array<std::array<std::size_t, static_cast<int>(MemKind::kCount)>, static_cast<int>(MemCategory::kCount)>
      usage_{};
  std::size_t device_peak_ = 0;
  ShrinkHints hints_{};

  // Why an allocation failed: the device budget, or the backend (GPU or host) had no room.
  enum class OomCause : std::uint8_t { Budget, Backend };
  [[noreturn]] void throw_out_of_memory(const std::string& name, std::size_t bytes, MemCategory category,
                                        MemKind kind, OomCause cause) const;
  std::string device_oom_summary(OomCause cause) const;
  std::string biggest_categories(MemCategory failing) const;
};

}  // namespace llmq
