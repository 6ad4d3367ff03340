// Entry point of every GPU test executable. Without a usable CUDA device no test runs: the
// program prints gtest's "[  SKIPPED ]" marker, which ctest's SKIP_REGULAR_EXPRESSION turns into a
// "skipped" result, so CI machines without a GPU report these tests as skipped, not passed.
// Listing tests (ctest discovery) works without a device.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdio>

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (!GTEST_FLAG_GET(list_tests)) {
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0) {
      std::printf("[  SKIPPED ] no CUDA device (%s): GPU tests need an NVIDIA GPU\n",
                  err != cudaSuccess ? cudaGetErrorString(err) : "0 devices");
      return 0;
    }
  }
  return RUN_ALL_TESTS();
}
