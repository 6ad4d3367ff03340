// Rotary embedding (src/kernels/rope.cu) against plain CPU loops that mirror the head comment: the
// cos/sin table (fp32 recipe of transformers, optional bf16 rounding), forward and backward rotation
// of the q and k heads of a packed qkv tensor in place and out of place (v untouched / copied), the
// forward-backward round trip, and bad inputs. The abs-max option (FP8 scales): runs without and with it
// must give bit-identical outputs, and the slot must end up holding exactly max(its previous value,
// max |out|) over the whole copied-back tensor, v heads included (also in place, where v is not written).
// Tolerances (relative L2 over the whole tensor): fp32 < 1e-5, bf16 < 1e-2 (the reference sees the
// inputs and the bf16-rounded table exactly as the device does); the table itself < 1e-6.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <utility>
#include <type_traits>
#include <vector>

#include "gpu_test_utils.h"
#include "kernels/rope.h"

namespace llmq::test {
namespace {

float round_to_bf16(float x) { return __bfloat162float(__float2bfloat16(x)); }

// transformers' fp32 recipe: e = float(2i)/float(Hs), inv_freq = 1/float(theta^e), angle = float(t)*inv_freq.
std::vector<float2> table_reference(int T, int Hs, float theta, bool bf16) {
  const int half = Hs / 2;
  std::vector<float2> table(static_cast<std::size_t>(T) * half);
  for (int t = 0; t < T; ++t) {
    for (int i = 0; i < half; ++i) {
      const float exponent = static_cast<float>(2 * i) / static_cast<float>(Hs);
      const float inv_freq =
          1.0f / static_cast<float>(std::pow(static_cast<double>(theta), static_cast<double>(exponent)));
      const float angle = static_cast<float>(t) * inv_freq;
      float c = static_cast<float>(std::cos(static_cast<double>(angle)));
      float s = static_cast<float>(std::sin(static_cast<double>(angle)));
      if (bf16) {
        c = round_to_bf16(c);
        s = round_to_bf16(s);
      }
      table[static_cast<std::size_t>(t) * half + i] = make_float2(c, s);
    }
  }
  return table;
}

std::vector<float> flatten(const std::vector<float2>& table) {
  std::vector<float> out;
  for (const auto& cs : table) {
    out.push_back(cs.x);
    out.push_back(cs.y);
  }
  return out;
}

struct Shape {
  int B, T, Hq, Hkv, Hs;
  int heads() const { return Hq + 2 * Hkv; }
  std::size_t size() const { return static_cast<std::size_t>(B) * T * heads() * Hs; }
};

// Rotates q and k heads by sign * angle; v heads are copied.
std::vector<double> rope_reference(const std::vector<float>& qkv, const std::vector<float2>& table, const Shape& s,
                                   double sign) {
  std::vector<double> out(qkv.begin(), qkv.end());
  const int half = s.Hs / 2;
  for (int b = 0; b < s.B; ++b) {
    for (int t = 0; t < s.T; ++t) {
      for (int h = 0; h < s.Hq + s.Hkv; ++h) {
        const std::size_t base = ((static_cast<std::size_t>(b) * s.T + t) * s.heads() + h) * s.Hs;
        for (int i = 0; i < half; ++i) {
          const double c = table[static_cast<std::size_t>(t) * half + i].x;
          const double sn = sign * table[static_cast<std::size_t>(t) * half + i].y;
          const double a = qkv[base + i], bb = qkv[base + i + half];
          out[base + i] = a * c - bb * sn;
          out[base + i + half] = bb * c + a * sn;
        }
      }
    }
  }
  return out;
}

// True when every v head of `got` equals `expected` bit for bit.
bool v_heads_equal(const std::vector<float>& got, const std::vector<float>& expected, const Shape& s) {
  for (long row = 0; row < static_cast<long>(s.B) * s.T; ++row) {
    const std::size_t v_begin = (static_cast<std::size_t>(row) * s.heads() + s.Hq + s.Hkv) * s.Hs;
    const std::size_t v_size = static_cast<std::size_t>(s.Hkv) * s.Hs;
    if (std::memcmp(got.data() + v_begin, expected.data() + v_begin, v_size * sizeof(float)) != 0) return false;
  }
  return true;
}

constexpr float kTheta = 1000000.f;  // Qwen2.5 rope_theta
constexpr int kTableRows = 64;       // more rows than the sequences below use

template <typename T>
class RopeTest : public ::testing::Test {};
using ElementTypes = ::testing::Types<float, nv_bfloat16>;
TYPED_TEST_SUITE(RopeTest, ElementTypes);

// Applies rope_forward (sign +1) or rope_backward (sign -1) in place or out of place and compares.
template <typename T>
void check_rotation(const Shape& s, double sign, bool in_place) {
  SCOPED_TRACE(testing::Message() << (sign > 0 ? "forward" : "backward") << (in_place ? " in place" : " out of place")
                                  << " B=" << s.B << " T=" << s.T << " Hq=" << s.Hq << " Hkv=" << s.Hkv
                                  << " Hs=" << s.Hs);
  const bool bf16 = std::is_same_v<T, nv_bfloat16>;
  const auto table = table_reference(kTableRows, s.Hs, kTheta, bf16);
  const auto qkv = representable<T>(random_normal(s.size(), 61));
  DeviceBuffer<float2> d_table(table);
  DeviceBuffer<T> d_in(as_device_type<T>(qkv)), d_out(s.size());
  d_out.poison();
  T* out = in_place ? d_in.get() : d_out.get();
  if (sign > 0) {
    kernels::rope_forward(out, d_in.get(), d_table.get(), s.B, s.T, s.Hq, s.Hkv, s.Hs, nullptr);
  } else {
    kernels::rope_backward(out, d_in.get(), d_table.get(), s.B, s.T, s.Hq, s.Hkv, s.Hs, nullptr);
  }
  sync_and_check();
  const auto got = as_float(in_place ? d_in.download() : d_out.download());
  EXPECT_LT(rel_l2(got, rope_reference(qkv, table, s, sign)), tolerance<T>());
  EXPECT_TRUE(v_heads_equal(got, qkv, s)) << "v heads must be untouched (in place) or copied exactly";
}

const Shape kQwenSmall{3, 37, 14, 2, 64};  // Qwen2.5-0.5B heads, odd sequence length
const Shape kWideHeads{2, 33, 4, 2, 128};

TYPED_TEST(RopeTest, ForwardOutOfPlace) {
  check_rotation<TypeParam>(kQwenSmall, +1, false);
  check_rotation<TypeParam>(kWideHeads, +1, false);
}
TYPED_TEST(RopeTest, ForwardInPlace) {
  check_rotation<TypeParam>(kQwenSmall, +1, true);
  check_rotation<TypeParam>(kWideHeads, +1, true);
}
TYPED_TEST(RopeTest, BackwardOutOfPlace) {
  check_rotation<TypeParam>(kQwenSmall, -1, false);
  check_rotation<TypeParam>(kWideHeads, -1, false);
}
TYPED_TEST(RopeTest, BackwardInPlace) {
  check_rotation<TypeParam>(kQwenSmall, -1, true);
  check_rotation<TypeParam>(kWideHeads, -1, true);
}

// The rotation is orthogonal: backward(forward(x)) == x up to fp32 rounding.
TEST(Rope, BackwardUndoesForward) {
  const Shape s = kQwenSmall;
  const auto qkv = random_normal(s.size(), 62);
  DeviceBuffer<float2> d_table(kTableRows * s.Hs / 2);
  DeviceBuffer<float> d_qkv(qkv);
  kernels::rope_cos_sin_table(d_table.get(), kTableRows, s.Hs, kTheta, false, nullptr);
  kernels::rope_forward(d_qkv.get(), d_qkv.get(), d_table.get(), s.B, s.T, s.Hq, s.Hkv, s.Hs, nullptr);
  sync_and_check();
  EXPECT_GT(rel_l2(d_qkv.download(), qkv), 1e-2) << "the forward must change q and k";
  kernels::rope_backward(d_qkv.get(), d_qkv.get(), d_table.get(), s.B, s.T, s.Hq, s.Hkv, s.Hs, nullptr);
  sync_and_check();
  EXPECT_LT(rel_l2(d_qkv.download(), qkv), 1e-5);
}

// ---- abs-max ----------------------------------------------------------------------------------

template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

constexpr float kBigSlot = 1e30f;  // a slot already holding more than any output here: must be kept

// max |x| over the q and k heads (first) and over the v heads (second).
std::pair<float, float> qk_and_v_abs_max(const std::vector<float>& qkv, const Shape& s) {
  float qk = 0.f, v = 0.f;
  for (std::size_t i = 0; i < qkv.size(); ++i) {
    const bool is_v = static_cast<int>(i / s.Hs % s.heads()) >= s.Hq + s.Hkv;
    float& m = is_v ? v : qk;
    m = std::max(m, std::fabs(qkv[i]));
  }
  return {qk, v};
}

// rope_forward (sign +1) or rope_backward (sign -1) without, then with an abs-max slot holding slot_before.
// v_scale scales the v heads of the input: > 1 puts the maximum in v, so that leaving v out is caught.
template <typename T>
void check_rotation_absmax(const Shape& s, double sign, bool in_place, float slot_before, float v_scale) {
  SCOPED_TRACE(testing::Message() << (sign > 0 ? "forward" : "backward") << (in_place ? " in place" : " out of place")
                                  << " B=" << s.B << " T=" << s.T << " Hq=" << s.Hq << " Hkv=" << s.Hkv
                                  << " Hs=" << s.Hs << " slot " << slot_before << " v x" << v_scale);
  auto values = random_normal(s.size(), 63);
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (static_cast<int>(i / s.Hs % s.heads()) >= s.Hq + s.Hkv) values[i] *= v_scale;
  }
  const auto qkv = as_device_type<T>(values);
  DeviceBuffer<float2> d_table(table_reference(s.T, s.Hs, kTheta, std::is_same_v<T, nv_bfloat16>));
  DeviceBuffer<T> d_in(s.size()), d_out(s.size());
  DeviceBuffer<float> d_absmax(std::vector<float>{slot_before});
  T* out = in_place ? d_in.get() : d_out.get();
  auto run = [&](float* absmax) {
    d_in.upload(qkv);
    d_out.poison();
    if (sign > 0) {
      kernels::rope_forward(out, d_in.get(), d_table.get(), s.B, s.T, s.Hq, s.Hkv, s.Hs, nullptr, absmax);
    } else {
      kernels::rope_backward(out, d_in.get(), d_table.get(), s.B, s.T, s.Hq, s.Hkv, s.Hs, nullptr, absmax);
    }
    sync_and_check();
    return in_place ? d_in.download() : d_out.download();
  };
  const auto plain = run(nullptr);
  const auto with_absmax = run(d_absmax.get());
  EXPECT_TRUE(same_bits(plain, with_absmax));
  const auto got = as_float(with_absmax);
  ASSERT_TRUE(all_finite(got));
  const auto [qk_max, v_max] = qk_and_v_abs_max(got, s);
  EXPECT_EQ(d_absmax.download()[0], std::max({slot_before, qk_max, v_max}));
  if (v_scale > 1.f) EXPECT_GT(v_max, qk_max) << "test setup: the maximum should lie in v";
  if (v_scale < 1.f) EXPECT_GT(qk_max, v_max) << "test setup: the maximum should lie in q or k";
}

// More vector pairs than the abs-max grid has threads (one wave: at most 2^18 on an H100), so that
// threads loop: 4 x 1024 x 18 heads x 4 (bf16) or 8 (fp32).
const Shape kLong{4, 1024, 14, 2, 64};

TYPED_TEST(RopeTest, ForwardAbsMax) {
  for (bool in_place : {false, true}) {
    check_rotation_absmax<TypeParam>(kQwenSmall, +1, in_place, 0.f, 4.f);
    check_rotation_absmax<TypeParam>(kWideHeads, +1, in_place, 0.f, 0.25f);
    check_rotation_absmax<TypeParam>(kLong, +1, in_place, 0.f, 4.f);
  }
  check_rotation_absmax<TypeParam>(kQwenSmall, +1, true, kBigSlot, 1.f);
}
TYPED_TEST(RopeTest, BackwardAbsMaxCoversDqDkAndDv) {
  for (bool in_place : {false, true}) {
    check_rotation_absmax<TypeParam>(kQwenSmall, -1, in_place, 0.f, 4.f);
    check_rotation_absmax<TypeParam>(kWideHeads, -1, in_place, 0.f, 0.25f);
    check_rotation_absmax<TypeParam>(kLong, -1, in_place, 0.f, 4.f);
  }
  check_rotation_absmax<TypeParam>(kLong, -1, true, kBigSlot, 1.f);
}

void check_table(int T, int Hs, float theta, bool bf16) {
  SCOPED_TRACE(testing::Message() << "T=" << T << " Hs=" << Hs << " theta=" << theta << " bf16=" << bf16);
  DeviceBuffer<float2> d_table(static_cast<std::size_t>(T) * Hs / 2);
  d_table.poison();
  kernels::rope_cos_sin_table(d_table.get(), T, Hs, theta, bf16, nullptr);
  sync_and_check();
  const auto got = d_table.download();
  const auto ref = table_reference(T, Hs, theta, bf16);
  EXPECT_LT(rel_l2(flatten(got), flatten(ref)), 1e-6);
  // Position 0 is the identity; position 1, pair 0 has inv_freq 1: angle 1 rad.
  EXPECT_EQ(got[0].x, 1.f);
  EXPECT_EQ(got[0].y, 0.f);
  const float c1 = static_cast<float>(std::cos(1.0)), s1 = static_cast<float>(std::sin(1.0));
  EXPECT_EQ(got[Hs / 2].x, bf16 ? round_to_bf16(c1) : c1);
  EXPECT_EQ(got[Hs / 2].y, bf16 ? round_to_bf16(s1) : s1);
  if (bf16) {
    for (const auto& cs : got) {
      ASSERT_EQ(cs.x, round_to_bf16(cs.x)) << "not a bf16 value";
      ASSERT_EQ(cs.y, round_to_bf16(cs.y)) << "not a bf16 value";
    }
  }
}

TEST(Rope, CosSinTableFollowsTheFp32Recipe) {
  check_table(4096, 64, 1000000.f, false);
  check_table(1024, 128, 10000.f, false);
  check_table(37, 64, 1000000.f, false);
}
TEST(Rope, CosSinTableRoundedToBf16) {
  check_table(4096, 64, 1000000.f, true);
  check_table(33, 128, 10000.f, true);
}

TEST(Rope, RejectsBadInputs) {
  DeviceBuffer<float2> table(64 * 64);
  DeviceBuffer<float> qkv(2 * 8 * 6 * 128);
  EXPECT_THROW(kernels::rope_cos_sin_table(table.get(), 64, 63, kTheta, false, nullptr), Error);  // odd Hs
  EXPECT_THROW(kernels::rope_cos_sin_table(table.get(), 0, 64, kTheta, false, nullptr), Error);
  EXPECT_THROW(kernels::rope_cos_sin_table(table.get(), 64, 64, 1.f, false, nullptr), Error);              // theta
  EXPECT_THROW(kernels::rope_forward(qkv.get(), qkv.get(), table.get(), 2, 8, 2, 2, 24, nullptr), Error);  // Hs % 16
  EXPECT_THROW(kernels::rope_forward(qkv.get(), qkv.get(), table.get(), 2, 8, 0, 2, 64, nullptr), Error);
  EXPECT_THROW(kernels::rope_backward(qkv.get() + 1, qkv.get(), table.get(), 2, 8, 2, 2, 64, nullptr),
               Error);  // misaligned
  sync_and_check();
}

// Qwen2.5-0.5B heads at 16 x 1024 tokens, bf16, in place. Prints the effective bandwidth.
TEST(Rope, BandwidthAtQwenShapes) {
  const Shape s{16, 1024, 14, 2, 64};
  DeviceBuffer<float2> table(static_cast<std::size_t>(s.T) * s.Hs / 2);
  DeviceBuffer<nv_bfloat16> qkv(to_bf16(random_floats(s.size(), 96)));
  kernels::rope_cos_sin_table(table.get(), s.T, s.Hs, kTheta, true, nullptr);
  const double rotated_bytes = static_cast<double>(s.B) * s.T * (s.Hq + s.Hkv) * s.Hs * sizeof(nv_bfloat16);
  const double fwd_ms =
      mean_ms([&] { kernels::rope_forward(qkv.get(), qkv.get(), table.get(), s.B, s.T, s.Hq, s.Hkv, s.Hs, nullptr); });
  report_bandwidth("rope_forward in place bf16 B=16 T=1024 Hq=14 Hkv=2 Hs=64", 2.0 * rotated_bytes, fwd_ms);
  const double bwd_ms =
      mean_ms([&] { kernels::rope_backward(qkv.get(), qkv.get(), table.get(), s.B, s.T, s.Hq, s.Hkv, s.Hs, nullptr); });
  report_bandwidth("rope_backward in place bf16 B=16 T=1024 Hq=14 Hkv=2 Hs=64", 2.0 * rotated_bytes, bwd_ms);
  // With the abs-max the v heads are read too.
  DeviceBuffer<float> absmax(std::vector<float>{0.f});  // never reset: it only maxes
  const double v_bytes = static_cast<double>(s.B) * s.T * s.Hkv * s.Hs * sizeof(nv_bfloat16);
  const double bwd_absmax_ms = mean_ms([&] {
    kernels::rope_backward(qkv.get(), qkv.get(), table.get(), s.B, s.T, s.Hq, s.Hkv, s.Hs, nullptr, absmax.get());
  });
  report_bandwidth("rope_backward in place with absmax bf16 B=16 T=1024 Hq=14 Hkv=2 Hs=64",
                   2.0 * rotated_bytes + v_bytes, bwd_absmax_ms);
  EXPECT_TRUE(all_finite(to_float(qkv.download())));
}

}  // namespace
}  // namespace llmq::test
