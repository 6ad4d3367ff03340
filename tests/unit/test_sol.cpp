// Speed-of-light table and arithmetic; the GPU-info parts that run without a GPU.
#include <gtest/gtest.h>

#include <cmath>

#include "core/errors.h"
#include "core/gpu_info.h"
#include "core/sol.h"

using namespace llmq;

TEST(PeakFlops, LooksUpByDeviceName) {
  EXPECT_DOUBLE_EQ(*peak_flops("NVIDIA H100 80GB HBM3", DType::BF16), 989.4e12);
  EXPECT_DOUBLE_EQ(*peak_flops("NVIDIA H100 80GB HBM3", DType::E4M3), 1978.9e12);
  EXPECT_DOUBLE_EQ(*peak_flops("NVIDIA H100 PCIe", DType::BF16), 756e12);
  EXPECT_DOUBLE_EQ(*peak_flops("NVIDIA H100 PCIe", DType::E4M3), 1513e12);
  EXPECT_DOUBLE_EQ(*peak_flops("NVIDIA H200", DType::BF16), 989.4e12);
  EXPECT_DOUBLE_EQ(*peak_flops("NVIDIA GeForce RTX 4090", DType::BF16), 165.2e12);
  EXPECT_DOUBLE_EQ(*peak_flops("NVIDIA GeForce RTX 4090", DType::E4M3), 330.3e12);
  EXPECT_DOUBLE_EQ(*peak_flops("NVIDIA L40S", DType::E4M3), 733e12);
  EXPECT_DOUBLE_EQ(*peak_flops("NVIDIA RTX 6000 Ada Generation", DType::BF16), 364.2e12);
  EXPECT_DOUBLE_EQ(*peak_flops("NVIDIA RTX PRO 6000 Blackwell Workstation Edition", DType::BF16), 503.8e12);
  EXPECT_DOUBLE_EQ(*peak_flops("NVIDIA GeForce RTX 5090", DType::E4M3), 419e12);
  EXPECT_DOUBLE_EQ(*peak_flops("NVIDIA A100-SXM4-80GB", DType::BF16), 312e12);
  EXPECT_DOUBLE_EQ(*peak_flops("nvidia h100 80gb hbm3", DType::BF16), 989.4e12);  // case-insensitive
}

TEST(PeakFlops, DtypeSelectsTheUnit) {
  // fp16 runs on the same tensor cores as bf16; e5m2 like e4m3; fp32 without TF32 on the CUDA cores.
  EXPECT_EQ(peak_flops("NVIDIA H100 80GB HBM3", DType::FP16), peak_flops("NVIDIA H100 80GB HBM3", DType::BF16));
  EXPECT_EQ(peak_flops("NVIDIA H100 80GB HBM3", DType::E5M2), peak_flops("NVIDIA H100 80GB HBM3", DType::E4M3));
  EXPECT_DOUBLE_EQ(*peak_flops("NVIDIA H100 80GB HBM3", DType::FP32), 66.9e12);
  EXPECT_DOUBLE_EQ(*peak_flops("NVIDIA A100 80GB PCIe", DType::FP32), 19.5e12);
  EXPECT_FALSE(peak_flops("NVIDIA H100 80GB HBM3", DType::INT32));
}

TEST(PeakFlops, UnknownGpuOrMissingUnitIsNullopt) {
  EXPECT_FALSE(peak_flops("Tesla T4", DType::BF16));
  EXPECT_FALSE(peak_flops("", DType::BF16));
  EXPECT_FALSE(peak_flops("NVIDIA A100-SXM4-80GB", DType::E4M3));  // Ampere has no FP8 tensor cores
  EXPECT_FALSE(peak_flops("NVIDIA GeForce RTX 4090 Laptop GPU", DType::BF16));
  EXPECT_EQ(find_gpu_peak("AMD Instinct MI300X"), nullptr);
}

TEST(PeakFlops, MarksApproximateFigures) {
  ASSERT_NE(find_gpu_peak("NVIDIA RTX PRO 6000 Blackwell Workstation Edition"), nullptr);
  EXPECT_TRUE(find_gpu_peak("NVIDIA RTX PRO 6000 Blackwell Workstation Edition")->approximate);
  EXPECT_TRUE(find_gpu_peak("NVIDIA GeForce RTX 5090")->approximate);
  EXPECT_FALSE(find_gpu_peak("NVIDIA H100 80GB HBM3")->approximate);
  // The RTX 6000 Ada row must not catch the Blackwell RTX PRO 6000, nor H100 catch H100 PCIe.
  EXPECT_NE(find_gpu_peak("NVIDIA RTX PRO 6000 Blackwell"), find_gpu_peak("NVIDIA RTX 6000 Ada Generation"));
  EXPECT_NE(find_gpu_peak("NVIDIA H100 PCIe"), find_gpu_peak("NVIDIA H100 80GB HBM3"));
}

TEST(SolFraction, Arithmetic) {
  EXPECT_DOUBLE_EQ(sol_fraction(1000.0, 2e9, 4e12), 0.5);
  EXPECT_DOUBLE_EQ(sol_fraction(0.0, 2e9, 4e12), 0.0);
  // 148k tokens/s at 3.0959e9 FLOPs/token (Qwen2.5-0.5B, T = 1024) on an H100 SXM: 46.3%.
  EXPECT_NEAR(sol_fraction(148000.0, 3095887872.0, *peak_flops("NVIDIA H100 80GB HBM3", DType::BF16)), 0.4631, 1e-4);
  EXPECT_THROW(sol_fraction(1000.0, 2e9, 0.0), Error);
  EXPECT_THROW(sol_fraction(-1.0, 2e9, 4e12), Error);
  EXPECT_EQ(format_sol(1000.0, 2e9, 4e12), "sol 50.0%");
  EXPECT_EQ(format_sol(1000.0, 2e9, std::nullopt), "sol n/a");
}

// ---- gpu_info: only what runs on a machine without a GPU ----

TEST(GpuInfo, QueryFailsClearlyWithoutDevice) {
  const int count = cuda_device_count();
  ASSERT_GE(count, 0);
  if (count == 0) {
    try {
      query_gpu(0);
      FAIL() << "query_gpu(0) should throw without a GPU";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("no CUDA device"), std::string::npos) << e.what();
    }
  } else {
    GpuInfo g = query_gpu(0);
    EXPECT_FALSE(g.name.empty());
    EXPECT_GT(g.sm_count, 0);
    EXPECT_GT(g.total_memory, 0u);
    EXPECT_THROW(query_gpu(count), Error);
  }
  EXPECT_THROW(query_gpu(-1), Error);
}

TEST(GpuInfo, Describe) {
  GpuInfo g;
  g.name = "NVIDIA H100 80GB HBM3";
  g.cc_major = 9;
  g.cc_minor = 0;
  g.sm_count = 132;
  g.total_memory = 85ull << 30;
  EXPECT_EQ(describe(g), "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 85.0 GiB)");
}

TEST(GpuInfo, NvmlReaderNeverCrashes) {
  // Without libnvidia-ml (or a driver) this is nullopt; with one, the readings are plausible.
  auto u = read_gpu_utilization(0);
  if (!nvml_available()) EXPECT_FALSE(u);
  if (u) {
    EXPECT_GE(u->gpu_util_percent, 0);
    EXPECT_LE(u->gpu_util_percent, 100);
    EXPECT_LE(u->mem_util_percent, 100);
    EXPECT_GT(u->sm_clock_mhz, 0);
    EXPECT_GE(u->power_w, 0.0);
  }
  EXPECT_FALSE(read_gpu_utilization(-1));
  EXPECT_FALSE(read_gpu_utilization(100000));
}
