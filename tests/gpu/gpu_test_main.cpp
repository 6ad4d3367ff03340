// Entry point of every GPU test executable: without a usable CUDA device every test is reported
// as SKIPPED (ctest shows them as skipped, not passed), so CI machines without a GPU stay green.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdio>

namespace {
class RequireGpu : public ::testing::Environment {
 public:
  void SetUp() override {
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0) {
      std::printf("no CUDA device (%s): skipping GPU tests\n", cudaGetErrorString(err));
      GTEST_SKIP() << "no CUDA device";
    }
  }
};
}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  ::testing::AddGlobalTestEnvironment(new RequireGpu);
  return RUN_ALL_TESTS();
}
