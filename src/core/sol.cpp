// Peak throughput table and SOL arithmetic (see sol.h).
#include "core/sol.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <string>

#include "core/errors.h"

namespace llmq {

namespace {

// Every figure: dense (no 2:4 sparsity), FP32 accumulation, boost clock, from the vendor's data
// sheets or architecture whitepapers. More specific names come first (first match wins).
constexpr std::array<GpuPeak, 11> kPeaks{{
    // H100 PCIe (114 SMs, 350 W): 756 bf16, 1513 fp8, 51.2 fp32.
    {"H100 PCIe", 756.0, 1513.0, 51.2, false},
    // H100 NVL (per GPU, 400 W): half the sparse data-sheet figures 1671 / 3341; 60 fp32.
    {"H100 NVL", 835.5, 1670.5, 60.0, true},
    // H100 SXM5 ("H100 80GB HBM3", 132 SMs): 989.4 bf16, 1978.9 fp8, 66.9 fp32.
    {"H100", 989.4, 1978.9, 66.9, false},
    // H200 NVL: same silicon at 600 W; data sheet lists the H100 NVL compute figures.
    {"H200 NVL", 835.5, 1670.5, 60.0, true},
    // H200 SXM (and GH200): the H100 SXM5 compute die, so the same peaks.
    {"H200", 989.4, 1978.9, 66.9, false},
    // A100 (SXM4 and PCIe, 40/80 GB): 312 bf16, 19.5 fp32; Ampere has no FP8 tensor cores.
    {"A100", 312.0, std::nullopt, 19.5, false},
    // L40S: 362.05 bf16, 733 fp8, 91.6 fp32.
    {"L40S", 362.0, 733.0, 91.6, false},
    // RTX 6000 Ada Generation: 364.2 bf16, 728.5 fp8, 91.1 fp32.
    {"RTX 6000 Ada", 364.2, 728.5, 91.1, false},
    // RTX PRO 6000 Blackwell (Workstation Edition, 600 W): no published dense bf16/fp8 figure; derived from
    // the sparse FP4 headline (about 4 PFLOP/s) halved per precision step; 125 fp32. Max-Q clocks lower.
    {"RTX PRO 6000", 503.8, 1007.6, 125.0, true},
    // GeForce RTX 4090: FP32 accumulation runs at half rate on GeForce: 165.2 bf16, 330.3 fp8, 82.6 fp32.
    {"RTX 4090", 165.2, 330.3, 82.6, false},
    // GeForce RTX 5090: half-rate FP32 accumulation as on the 4090: 209.5 bf16, 419 fp8, 104.8 fp32.
    {"RTX 5090", 209.5, 419.0, 104.8, true},
}};

std::string to_lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
  return out;
}

}  // namespace

const GpuPeak* find_gpu_peak(std::string_view gpu_name) {
  const std::string name = to_lower(gpu_name);
  // Laptop parts share desktop names but run far below the desktop peaks.
  if (name.find("laptop") != std::string::npos) return nullptr;
  for (const GpuPeak& row : kPeaks)
    if (name.find(to_lower(row.match)) != std::string::npos) return &row;
  return nullptr;
}

std::optional<double> peak_flops(std::string_view gpu_name, DType matmul_dtype) {
  const GpuPeak* row = find_gpu_peak(gpu_name);
  if (!row) return std::nullopt;
  std::optional<double> tflops;
  switch (matmul_dtype) {
    case DType::BF16:
    case DType::FP16: tflops = row->bf16_tflops; break;
    case DType::E4M3:
    case DType::E5M2: tflops = row->fp8_tflops; break;
    case DType::FP32: tflops = row->fp32_tflops; break;
    default: break;
  }
  if (!tflops) return std::nullopt;
  return *tflops * 1e12;
}

double sol_fraction(double tokens_per_second, double flops_per_token, double peak) {
  LLMQ_REQUIRE(peak > 0, "sol_fraction: peak FLOP/s must be positive, got {}", peak);
  LLMQ_REQUIRE(tokens_per_second >= 0 && flops_per_token >= 0,
               "sol_fraction: throughput ({}) and FLOPs per token ({}) must not be negative", tokens_per_second,
               flops_per_token);
  return tokens_per_second * flops_per_token / peak;
}

std::string format_sol(double tokens_per_second, double flops_per_token, std::optional<double> peak) {
  if (!peak || *peak <= 0) return "sol n/a";
  return fmt::format("sol {:.1f}%", 100.0 * sol_fraction(tokens_per_second, flops_per_token, *peak));
}

}  // namespace llmq
