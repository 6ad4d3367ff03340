// Global gradient norm (src/kernels/global_norm.cu) against a double CPU sum over tensors of odd
// sizes and misaligned starts; both clip-scale branches, non-finite gradients and reproducibility.
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "gpu_test_utils.h"
#include "kernels/global_norm.h"

namespace llmq::test {
namespace {

struct NormResult {
  float norm;
  float clip_scale;
};

// Holds several gradient tensors (each starting `offset` elements into its own buffer) and runs
// global_norm_squares on each slot followed by global_norm_finish.
template <typename T>
class NormCase {
 public:
  NormCase(const std::vector<std::size_t>& sizes, std::uint64_t seed, int offset = 0) : offset_(offset) {
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      const std::vector<float> values = representable<T>(random_floats(sizes[i] + offset, seed + i, -1.f, 1.f));
      for (std::size_t j = offset; j < values.size(); ++j) sum_sq_ += static_cast<double>(values[j]) * values[j];
      host_.push_back(values);
      buffers_.push_back(std::make_unique<DeviceBuffer<T>>(as_device_type<T>(values)));
    }
  }
  double expected_norm() const { return std::sqrt(sum_sq_); }
  void set_value(std::size_t tensor, std::size_t index, float value) {
    host_[tensor][offset_ + index] = value;
    buffers_[tensor]->upload(as_device_type<T>(host_[tensor]));
  }

  NormResult run(float max_norm) {
    const int slots = static_cast<int>(buffers_.size());
    DeviceBuffer<float> partials(kernels::global_norm_partials_bytes(slots) / sizeof(float));
    DeviceBuffer<float> norm(1), scale(1);
    partials.poison();
    norm.poison();
    scale.poison();
    for (int s = 0; s < slots; ++s) {
      kernels::global_norm_squares(buffers_[s]->get() + offset_, host_[s].size() - offset_, partials.get(), s, nullptr);
    }
    kernels::global_norm_finish(partials.get(), slots, max_norm, norm.get(), scale.get(), nullptr);
    sync_and_check();
    return {norm.download()[0], scale.download()[0]};
  }

 private:
  int offset_;
  double sum_sq_ = 0;
  std::vector<std::vector<float>> host_;
  std::vector<std::unique_ptr<DeviceBuffer<T>>> buffers_;
};

const std::vector<std::size_t> kOddSizes = {1, 7, 1000, 12345, (1u << 20) + 3, 0, 896};

// Tolerance: relative 1e-5 on the norm for fp32 and bf16 gradients alike (the reference sums the
// same bf16-rounded values; accumulation is fp32/double on the device).
constexpr double kNormTol = 1e-5;

template <typename T>
void check_norm(int offset) {
  NormCase<T> c(kOddSizes, 100 + offset, offset);
  const NormResult r = c.run(0.f);
  EXPECT_NEAR(r.norm, c.expected_norm(), kNormTol * c.expected_norm());
  EXPECT_EQ(r.clip_scale, 1.f) << "max_norm 0 disables clipping";
}

TEST(GlobalNorm, Fp32OddSizes) { check_norm<float>(0); }
TEST(GlobalNorm, Bf16OddSizes) { check_norm<nv_bfloat16>(0); }
TEST(GlobalNorm, Fp32MisalignedStarts) { check_norm<float>(1); }
TEST(GlobalNorm, Bf16MisalignedStarts) { check_norm<nv_bfloat16>(3); }

TEST(GlobalNorm, ClipScaleWhenNormExceedsMax) {
  NormCase<float> c({5000, 333}, 7);
  const double norm = c.expected_norm();
  const float max_norm = static_cast<float>(norm / 4);
  const NormResult r = c.run(max_norm);
  EXPECT_NEAR(r.norm, norm, kNormTol * norm);
  EXPECT_NEAR(r.clip_scale, max_norm / (norm + 1e-6), 1e-5 * 0.25);
  EXPECT_LT(r.clip_scale, 1.f);
}

TEST(GlobalNorm, NoClipWhenNormBelowMax) {
  NormCase<nv_bfloat16> c({5000, 333}, 8);
  const NormResult r = c.run(static_cast<float>(2 * c.expected_norm()));
  EXPECT_NEAR(r.norm, c.expected_norm(), kNormTol * c.expected_norm());
  EXPECT_EQ(r.clip_scale, 1.f);
}

// Two tensors with one element set to a non-finite `value`, max_norm 1: returns the result after
// expecting a clip scale of 1 (a non-finite norm must not zero the update).
template <typename T>
NormResult run_with_non_finite(std::uint64_t seed, std::size_t tensor, std::size_t index, float value) {
  NormCase<T> c({1000, 4097}, seed);
  c.set_value(tensor, index, value);
  const NormResult r = c.run(1.f);
  EXPECT_EQ(r.clip_scale, 1.f);
  return r;
}

TEST(GlobalNorm, NanGradientShowsInNormAndDoesNotZeroTheScale) {
  EXPECT_TRUE(std::isnan(run_with_non_finite<float>(9, 1, 4000, NAN).norm));
}

TEST(GlobalNorm, InfGradientShowsInNormAndDoesNotZeroTheScale) {
  EXPECT_TRUE(std::isinf(run_with_non_finite<nv_bfloat16>(10, 0, 3, INFINITY).norm));
}

TEST(GlobalNorm, BitReproducible) {
  NormCase<float> c(kOddSizes, 11);
  const NormResult a = c.run(1.f), b = c.run(1.f);
  EXPECT_EQ(std::memcmp(&a, &b, sizeof(NormResult)), 0);
}

TEST(GlobalNorm, RejectsBadArguments) {
  DeviceBuffer<float> grad(10), partials(kernels::kGlobalNormBlocksPerTensor), out(2);
  EXPECT_THROW(kernels::global_norm_squares(grad.get(), 10, partials.get(), -1, nullptr), Error);
  EXPECT_THROW(kernels::global_norm_squares(grad.get(), 10, nullptr, 0, nullptr), Error);
  EXPECT_THROW(kernels::global_norm_squares(static_cast<const float*>(nullptr), 10, partials.get(), 0, nullptr), Error);
  EXPECT_THROW(kernels::global_norm_finish(partials.get(), 0, 1.f, out.get(), out.get() + 1, nullptr), Error);
  EXPECT_THROW(kernels::global_norm_partials_bytes(-2), Error);
}

}  // namespace
}  // namespace llmq::test
