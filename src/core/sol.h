// Speed of light: the GPU's peak dense matmul throughput for the matmul dtype, and the fraction of
// it a training run reaches (tokens/s * FLOPs/token / peak).
//
// Peaks are the vendor's dense figures (no 2:4 sparsity) with FP32 accumulation, at boost clock.
// bf16 (and fp16) matmuls count against the bf16 tensor-core peak, e4m3 / e5m2 against the FP8
// tensor-core peak, fp32 matmuls against the plain FP32 (non-tensor-core) peak because llmq runs
// them without TF32.
#pragma once
#include <optional>
#include <string>
#include <string_view>

#include "core/dtype.h"

namespace llmq {

struct GpuPeak {
  std::string_view match;             // case-insensitive substring of the CUDA device name
  double bf16_tflops;                 // dense BF16 tensor core, FP32 accumulate
  std::optional<double> fp8_tflops;   // dense FP8 tensor core, FP32 accumulate; nullopt: no FP8 units
  double fp32_tflops;                 // plain FP32 (CUDA cores)
  bool approximate;                   // derived from partial vendor data; treat as +-5%
};

// The table row for a device name such as "NVIDIA H100 80GB HBM3"; nullptr for an unknown GPU.
const GpuPeak* find_gpu_peak(std::string_view gpu_name);

// Peak FLOP/s (not TFLOP/s) for matmuls in `matmul_dtype` on `gpu_name`; nullopt when the GPU is
// unknown or has no units for that dtype (FP8 on A100).
std::optional<double> peak_flops(std::string_view gpu_name, DType matmul_dtype);

// tokens_per_second * flops_per_token / peak_flops; peak must be positive.
double sol_fraction(double tokens_per_second, double flops_per_token, double peak_flops);

// "sol 46.5%" or, without a peak, "sol n/a".
std::string format_sol(double tokens_per_second, double flops_per_token, std::optional<double> peak_flops);

}  // namespace llmq
