// GPU facts (name, compute capability, memory, SMs) from the CUDA runtime, and live utilization,
// temperature, power and clock from NVML. NVML is loaded at run time with dlopen, so llmq builds
// without its header and runs (without these readings) where libnvidia-ml.so.1 is missing.
#pragma once
#include <cstddef>
#include <optional>
#include <string>

namespace llmq {

struct GpuInfo {
  int device = 0;
  std::string name;          // "NVIDIA H100 80GB HBM3"
  int cc_major = 0;          // compute capability, e.g. 9.0
  int cc_minor = 0;
  std::size_t total_memory = 0;  // bytes
  int sm_count = 0;
  std::string pci_bus_id;    // "0000:19:00.0": matches the CUDA device to its NVML handle
};

// Number of visible CUDA devices; 0 when there is none or no working driver (never throws).
int cuda_device_count();

// Properties of CUDA device `device`. Throws llmq::Error when there is no GPU or the index is out of range.
GpuInfo query_gpu(int device);

// "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 79.1 GiB)"
std::string describe(const GpuInfo& gpu);

struct GpuUtilization {
  int gpu_util_percent = 0;  // time a kernel was running over the last sample period
  int mem_util_percent = 0;  // time device memory was read or written over the last sample period
  int temperature_c = 0;
  double power_w = 0.0;
  int sm_clock_mhz = 0;
};

// True when libnvidia-ml.so.1 loaded and nvmlInit succeeded (tried once per process).
bool nvml_available();

// Current readings for CUDA device `cuda_device` (mapped to NVML by PCI bus id, so it respects
// CUDA_VISIBLE_DEVICES). nullopt when NVML is missing or any reading is unsupported; never throws.
// Safe to call from several threads.
std::optional<GpuUtilization> read_gpu_utilization(int cuda_device);

}  // namespace llmq
