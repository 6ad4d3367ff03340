// GPU properties through the CUDA runtime; NVML readings through a run-time loaded libnvidia-ml.
#include "core/gpu_info.h"

#include <cuda_runtime.h>
#include <dlfcn.h>

#include <map>
#include <mutex>

#include "core/errors.h"

namespace llmq {

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();  // clear it so that a later launch check does not report it
    return 0;
  }
  return count;
}

GpuInfo query_gpu(int device) {
  const int count = cuda_device_count();
  LLMQ_REQUIRE(count > 0, "no CUDA device found: llmq needs an NVIDIA GPU with a working driver (check `nvidia-smi` "
               "and CUDA_VISIBLE_DEVICES)");
  LLMQ_REQUIRE(device >= 0 && device < count, "CUDA device {} does not exist: {} device(s) are visible (0..{})", device,
               count, count - 1);
  cudaDeviceProp prop{};
  LLMQ_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  GpuInfo info;
  info.device = device;
  info.name = prop.name;
  info.cc_major = prop.major;
  info.cc_minor = prop.minor;
  info.total_memory = prop.totalGlobalMem;
  info.sm_count = prop.multiProcessorCount;
  char bus_id[64] = {};
  LLMQ_CUDA_CHECK(cudaDeviceGetPCIBusId(bus_id, sizeof(bus_id), device));
  info.pci_bus_id = bus_id;
  return info;
}

std::string describe(const GpuInfo& gpu) {
  return fmt::format("{} (sm_{}{}, {} SMs, {:.1f} GiB)", gpu.name, gpu.cc_major, gpu.cc_minor, gpu.sm_count,
                     static_cast<double>(gpu.total_memory) / (1ull << 30));
}

// ---- NVML, loaded with dlopen. The declarations mirror nvml.h (C ABI, stable since NVML 2). ----

namespace {

using nvmlReturn_t = int;  // NVML_SUCCESS == 0
using nvmlDevice_t = struct NvmlDeviceOpaque*;
struct NvmlUtilizationRates {
  unsigned int gpu;
  unsigned int memory;
};
constexpr int kNvmlTemperatureGpu = 0;  // NVML_TEMPERATURE_GPU
constexpr int kNvmlClockSm = 1;         // NVML_CLOCK_SM

using InitFn = nvmlReturn_t (*)();
using ShutdownFn = nvmlReturn_t (*)();
using HandleByIndexFn = nvmlReturn_t (*)(unsigned int, nvmlDevice_t*);
using HandleByPciBusIdFn = nvmlReturn_t (*)(const char*, nvmlDevice_t*);
using UtilizationFn = nvmlReturn_t (*)(nvmlDevice_t, NvmlUtilizationRates*);
using TemperatureFn = nvmlReturn_t (*)(nvmlDevice_t, int, unsigned int*);
using PowerFn = nvmlReturn_t (*)(nvmlDevice_t, unsigned int*);  // milliwatts
using ClockFn = nvmlReturn_t (*)(nvmlDevice_t, int, unsigned int*);

class Nvml {
 public:
  static Nvml& instance() {
    static Nvml nvml;  // loaded once, thread-safe (magic static)
    return nvml;
  }
  bool available() const { return initialized_; }

  std::optional<GpuUtilization> read(int cuda_device) {
    if (!initialized_) return std::nullopt;
    auto device = handle(cuda_device);
    if (!device) return std::nullopt;
    NvmlUtilizationRates rates{};
    unsigned int temperature = 0, milliwatts = 0, clock = 0;
    if (utilization_(*device, &rates) != 0 || temperature_(*device, kNvmlTemperatureGpu, &temperature) != 0 ||
        power_(*device, &milliwatts) != 0 || clock_(*device, kNvmlClockSm, &clock) != 0)
      return std::nullopt;
    return GpuUtilization{static_cast<int>(rates.gpu), static_cast<int>(rates.memory), static_cast<int>(temperature),
                          milliwatts / 1000.0, static_cast<int>(clock)};
  }

 private:
  Nvml() {
    lib_ = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib_) return;
    bool all = load(init_, "nvmlInit_v2") && load(shutdown_, "nvmlShutdown") &&
               load(by_index_, "nvmlDeviceGetHandleByIndex_v2") && load(utilization_, "nvmlDeviceGetUtilizationRates") &&
               load(temperature_, "nvmlDeviceGetTemperature") && load(power_, "nvmlDeviceGetPowerUsage") &&
               load(clock_, "nvmlDeviceGetClockInfo");
    load(by_bus_id_, "nvmlDeviceGetHandleByPciBusId_v2");  // optional: falls back to the index
    initialized_ = all && init_() == 0;
  }
  ~Nvml() {
    if (initialized_) shutdown_();
    // The library stays loaded: other static destructors may still run after this one.
  }
  Nvml(const Nvml&) = delete;
  Nvml& operator=(const Nvml&) = delete;

  template <typename Fn>
  bool load(Fn& fn, const char* symbol) {
    fn = reinterpret_cast<Fn>(dlsym(lib_, symbol));
    return fn != nullptr;
  }

  // NVML numbers all GPUs of the machine; CUDA only the visible ones, so match them by PCI bus id.
  std::optional<nvmlDevice_t> handle(int cuda_device) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (auto it = handles_.find(cuda_device); it != handles_.end()) return it->second;
    nvmlDevice_t device = nullptr;
    char bus_id[64] = {};
    bool found = false;
    if (by_bus_id_) {
      if (cudaDeviceGetPCIBusId(bus_id, sizeof(bus_id), cuda_device) == cudaSuccess)
        found = by_bus_id_(bus_id, &device) == 0;
      else
        (void)cudaGetLastError();  // that query's own error; do not leave it for a later launch check
    }
    if (!found) found = cuda_device >= 0 && by_index_(static_cast<unsigned>(cuda_device), &device) == 0;
    if (!found) return std::nullopt;
    handles_[cuda_device] = device;
    return device;
  }

  void* lib_ = nullptr;
  bool initialized_ = false;
  InitFn init_ = nullptr;
  ShutdownFn shutdown_ = nullptr;
  HandleByIndexFn by_index_ = nullptr;
  HandleByPciBusIdFn by_bus_id_ = nullptr;
  UtilizationFn utilization_ = nullptr;
  TemperatureFn temperature_ = nullptr;
  PowerFn power_ = nullptr;
  ClockFn clock_ = nullptr;
  std::mutex mutex_;
  std::map<int, nvmlDevice_t> handles_;
};

}  // namespace

bool nvml_available() { return Nvml::instance().available(); }

std::optional<GpuUtilization> read_gpu_utilization(int cuda_device) { return Nvml::instance().read(cuda_device); }

}  // namespace llmq
