#include "core/allocator.h"

#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <vector>

namespace llmq {

namespace {
constexpr std::array<std::string_view, static_cast<int>(MemCategory::kCount)> kCategoryNames{
    "Weights", "Master", "Gradients", "Adam M", "Adam V", "Activations", "Quants", "Workspace", "Other"};
constexpr std::array<std::string_view, static_cast<int>(MemKind::kCount)> kKindNames{"device", "pinned",
                                                                                      "write-combined", "host"};
// Budget accounting rounds every device block up like the CUDA allocator does for small blocks.
constexpr std::size_t kDeviceGranule = 512;

std::size_t accounted_bytes(std::size_t bytes, MemKind kind) {
  if (kind != MemKind::Device) return bytes;
  return (bytes + kDeviceGranule - 1) / kDeviceGranule * kDeviceGranule;
}

class CudaBackend final : public MemoryBackend {
 public:
  void* allocate(std::size_t bytes, MemKind kind) override {
    void* ptr = nullptr;
    cudaError_t err = cudaSuccess;
    switch (kind) {
      case MemKind::Device: err = cudaMalloc(&ptr, bytes); break;
      case MemKind::Pinned: err = cudaHostAlloc(&ptr, bytes, cudaHostAllocPortable | cudaHostAllocMapped); break;
      case MemKind::WriteCombined:
        err = cudaHostAlloc(&ptr, bytes, cudaHostAllocPortable | cudaHostAllocMapped | cudaHostAllocWriteCombined);
        break;
      case MemKind::Host: ptr = std::malloc(bytes); return ptr;
      case MemKind::kCount: break;
    }
    if (err == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();  // clear the sticky-free error state
      return nullptr;
    }
    LLMQ_CUDA_CHECK(err);
    return ptr;
  }
  void release(void* ptr, MemKind kind) override {
    if (kind == MemKind::Device) LLMQ_CUDA_CHECK(cudaFree(ptr));
    else if (kind == MemKind::Host) std::free(ptr);
    else LLMQ_CUDA_CHECK(cudaFreeHost(ptr));
  }
  std::size_t device_total_bytes() const override {
    std::size_t free = 0, total = 0;
    LLMQ_CUDA_CHECK(cudaMemGetInfo(&free, &total));
    return total;
  }
};
}  // namespace

std::string_view category_name(MemCategory c) { return kCategoryNames[static_cast<int>(c)]; }
std::string_view kind_name(MemKind k) { return kKindNames[static_cast<int>(k)]; }
std::unique_ptr<MemoryBackend> make_cuda_backend() { return std::make_unique<CudaBackend>(); }

std::size_t parse_byte_size(const std::string& text) {
  std::size_t pos = 0;
  double value = 0;
  try {
    value = std::stod(text, &pos);
  } catch (const std::exception&) {
    throw Error(fmt::format("'{}' is not a memory size: use e.g. 16GiB, 24GB, 512MiB", text));
  }
  std::string unit = text.substr(pos);
  unit.erase(std::remove(unit.begin(), unit.end(), ' '), unit.end());
  struct Unit { std::string_view name; double factor; };
  static constexpr Unit kUnits[] = {{"", 1}, {"B", 1}, {"KiB", 1024.0}, {"MiB", 1048576.0}, {"GiB", 1073741824.0},
                                    {"TiB", 1099511627776.0}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
                                    {"K", 1024.0}, {"M", 1048576.0}, {"G", 1073741824.0}};
  for (const auto& u : kUnits) {
    if (unit == u.name) {
      LLMQ_REQUIRE(value > 0 && std::isfinite(value), "memory size '{}' must be positive", text);
      return static_cast<std::size_t>(value * u.factor);
    }
  }
  throw Error(fmt::format("'{}': unknown unit '{}' (use B, KiB, MiB, GiB, KB, MB, GB)", text, unit));
}

std::string format_bytes(std::size_t bytes) {
  if (bytes >= (1ull << 30)) return fmt::format("{:.2f} GiB", bytes / 1073741824.0);
  if (bytes >= (1ull << 20)) return fmt::format("{:.1f} MiB", bytes / 1048576.0);
  if (bytes >= (1ull << 10)) return fmt::format("{:.1f} KiB", bytes / 1024.0);
  return fmt::format("{} B", bytes);
}

Allocator::Allocator(std::optional<std::size_t> device_budget, std::unique_ptr<MemoryBackend> backend)
    : backend_(std::move(backend)), budget_(device_budget) {}

Allocator::~Allocator() {
  for (auto& [ptr, block] : blocks_) {
    try {
      backend_->release(ptr, block.kind);
    } catch (...) {  // never throw from a destructor; the process is tearing down anyway
    }
  }
}

Tensor Allocator::allocate(const std::string& name, DType dtype, std::initializer_list<std::int64_t> shape,
                           MemCategory category, MemKind kind) {
  Tensor t(nullptr, dtype, shape, kind == MemKind::Device ? Location::Device : Location::Host);
  t.data = allocate_bytes(name, std::max<std::size_t>(t.bytes(), 1), category, kind);
  return t;
}

void* Allocator::allocate_bytes(const std::string& name, std::size_t bytes, MemCategory category, MemKind kind) {
  std::lock_guard lock(mutex_);
  std::size_t accounted = accounted_bytes(bytes, kind);
  if (kind == MemKind::Device && budget_ && device_in_use() + accounted > *budget_)
    throw_out_of_memory(name, bytes, category, kind, OomCause::Budget);
  void* ptr = backend_->allocate(bytes, kind);
  if (!ptr) throw_out_of_memory(name, bytes, category, kind, OomCause::Backend);
  blocks_.emplace(ptr, Block{name, accounted, category, kind});
  usage_[static_cast<int>(category)][static_cast<int>(kind)] += accounted;
  if (kind == MemKind::Device) device_peak_ = std::max(device_peak_, device_in_use());
  return ptr;
}

void Allocator::release(void* ptr) {
  if (!ptr) return;
  std::lock_guard lock(mutex_);
  auto it = blocks_.find(ptr);
  LLMQ_REQUIRE(it != blocks_.end(), "internal error: releasing memory the allocator does not own");
  usage_[static_cast<int>(it->second.category)][static_cast<int>(it->second.kind)] -= it->second.bytes;
  backend_->release(ptr, it->second.kind);
  blocks_.erase(it);
}

std::size_t Allocator::in_use(MemCategory category, MemKind kind) const {
  return usage_[static_cast<int>(category)][static_cast<int>(kind)];
}

std::size_t Allocator::device_in_use() const {
  std::size_t total = 0;
  for (const auto& per_kind : usage_) total += per_kind[static_cast<int>(MemKind::Device)];
  return total;
}

std::string Allocator::state_report() const {
  std::lock_guard lock(mutex_);
  std::string out = "[Allocator State]\n";
  std::size_t host_total = 0;
  for (int c = 0; c < static_cast<int>(MemCategory::kCount); ++c) {
    std::size_t dev = usage_[c][static_cast<int>(MemKind::Device)];
    std::size_t host = usage_[c][static_cast<int>(MemKind::Pinned)] + usage_[c][static_cast<int>(MemKind::WriteCombined)];
    host_total += host;
    if (dev == 0 && host == 0) continue;
    out += fmt::format("  {:>12}: {:>10}", category_name(static_cast<MemCategory>(c)), format_bytes(dev));
    if (host) out += fmt::format("  (+{} pinned host)", format_bytes(host));
    out += "\n";
  }
  std::size_t used = device_in_use();
  std::size_t limit = budget_ ? *budget_ : 0;
  out += fmt::format("  {:>12}: {:>10}\n", "Device total", format_bytes(used));
  if (device_peak_ > used) out += fmt::format("  {:>12}: {:>10}\n", "Device peak", format_bytes(device_peak_));
  if (budget_) out += fmt::format("  {:>12}: {:>10} of {} budget\n", "Free", format_bytes(limit - used), format_bytes(limit));
  if (host_total) out += fmt::format("  {:>12}: {:>10}\n", "Pinned host", format_bytes(host_total));
  return out;
}

void Allocator::set_shrink_hints(ShrinkHints hints) {
  std::lock_guard lock(mutex_);
  hints_ = std::move(hints);
}

// The first line of a device out-of-memory message after the allocation itself: what the limit
// is and how much of it is taken.
std::string Allocator::device_oom_summary(OomCause cause) const {
  const std::size_t used = device_in_use();
  if (cause == OomCause::Budget) {
    return fmt::format("--memory-limit is {} and {} of it is in use ({} free)", format_bytes(*budget_),
                       format_bytes(used), format_bytes(*budget_ - std::min(used, *budget_)));
  }
  std::size_t total = 0;
  try {
    total = backend_->device_total_bytes();
  } catch (const std::exception&) {  // the size is only context; never hide the out-of-memory behind it
  }
  std::string gpu = total ? fmt::format("the GPU ({})", format_bytes(total)) : std::string("the GPU");
  std::string out = fmt::format("{} has no room for it: llmq holds {}, the rest is taken by the CUDA context, "
                                "libraries or other processes", gpu, format_bytes(used));
  if (budget_) out += fmt::format(" (--memory-limit of {} is not reached)", format_bytes(*budget_));
  return out;
}

// The largest device categories, biggest first, each with its registered hint, and the hint of
// the failing allocation's own category when it is not among them.
std::string Allocator::biggest_categories(MemCategory failing) const {
  constexpr std::size_t kShown = 4;
  std::vector<std::pair<std::size_t, MemCategory>> by_size;
  for (std::size_t c = 0; c < kMemCategoryCount; ++c) {
    std::size_t dev = usage_[c][static_cast<int>(MemKind::Device)];
    if (dev) by_size.emplace_back(dev, static_cast<MemCategory>(c));
  }
  std::stable_sort(by_size.begin(), by_size.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  if (by_size.size() > kShown) by_size.resize(kShown);
  if (by_size.empty()) return "\nNothing else is on the device yet: this allocation alone does not fit.";

  std::string out = "\nBiggest device users:";
  bool failing_shown = false;
  for (const auto& [dev, c] : by_size) {
    const std::string& hint = hints_[static_cast<int>(c)];
    out += fmt::format("\n  {:<12} {:>10}", category_name(c), format_bytes(dev));
    if (!hint.empty()) out += fmt::format("   shrink: {}", hint);
    failing_shown |= c == failing;
  }
  const std::string& own = hints_[static_cast<int>(failing)];
  if (!failing_shown && !own.empty()) out += fmt::format("\n{} (this allocation) shrinks with: {}", category_name(failing), own);
  return out;
}

void Allocator::throw_out_of_memory(const std::string& name, std::size_t bytes, MemCategory category, MemKind kind,
                                    OomCause cause) const {
  static constexpr std::array<std::string_view, static_cast<int>(MemKind::kCount)> kWhere{
      "device", "pinned host", "write-combined host", "host"};
  std::string head = fmt::format("out of memory: '{}' ({}) needs {} of {} memory", name, category_name(category),
                                 format_bytes(bytes), kWhere[static_cast<int>(kind)]);
  if (kind != MemKind::Device) {
    std::size_t host = 0;
    for (const auto& per_kind : usage_)
      host += per_kind[static_cast<int>(MemKind::Pinned)] + per_kind[static_cast<int>(MemKind::WriteCombined)];
    throw OutOfMemory(fmt::format("{}, but the host refused it (llmq holds {} of pinned host memory). Free host RAM "
                                  "or keep fewer tensors in host memory.", head, format_bytes(host)));
  }
  std::string msg = fmt::format("{}, but {}.{}", head, device_oom_summary(cause), biggest_categories(category));
  if (cause == OomCause::Budget) msg += "\nRaise --memory-limit if the GPU has room for more, or let --auto-fit choose the flags.";
  throw OutOfMemory(msg);
}

}  // namespace llmq
