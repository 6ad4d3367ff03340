// AdamW (src/kernels/adamw.cu) against a double CPU loop that mirrors the head comment, for fp32
// and bf16 storage of params / grads / m / v; stochastic rounding checked for unbiasedness and
// bit-reproducibility (also when a tensor is updated in slices); the bf16 copy of fp32 master
// weights checked bit-exactly. adamw_update_multi (pieces of tensors in flat arrays) checked
// bit-exactly against one adamw_update per piece, with poisoned padding that must stay untouched.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <random>
#include <type_traits>
#include <vector>

#include "gpu_test_utils.h"
#include "kernels/adamw.h"

namespace llmq::test {
namespace {

using kernels::AdamWConfig;

// Values exactly as a T buffer stores them.
template <typename T>
std::vector<float> stored(const std::vector<float>& v) {
  return as_float<T>(as_device_type<T>(v));
}

struct AdamState {
  std::vector<double> p, m, v;
};

// One AdamW step in double, exactly the head comment of adamw.cu.
void adamw_reference_step(AdamState& s, const std::vector<float>& grads, double grad_scale, const AdamWConfig& c) {
  const double b1 = c.beta1, b2 = c.beta2, lr = c.lr;
  const double bias1 = 1.0 - std::pow(b1, c.step), bias2 = 1.0 - std::pow(b2, c.step);
  for (std::size_t i = 0; i < s.p.size(); ++i) {
    const double g = grads[i] * grad_scale;
    s.p[i] -= lr * c.weight_decay * s.p[i];
    s.m[i] = b1 * s.m[i] + (1 - b1) * g;
    s.v[i] = b2 * s.v[i] + (1 - b2) * g * g;
    s.p[i] -= lr * (s.m[i] / bias1) / (std::sqrt(s.v[i] / bias2) + c.eps);
  }
}

AdamWConfig test_config() {
  AdamWConfig c;
  c.lr = 1e-2f;
  c.beta1 = 0.9f;
  c.beta2 = 0.95f;
  c.eps = 1e-8f;
  c.weight_decay = 0.1f;
  c.step = 1;
  c.seed = 1234;
  return c;
}

struct StepOutputs {
  std::vector<float> p, m, v;
};

// Runs `steps` AdamW steps on the GPU (buffers of type TP/TG/TM/TV, starting `offset` elements in)
// and the same steps on the CPU reference; returns the GPU state and leaves the reference in `ref`.
template <typename TP, typename TG, typename TM, typename TV>
StepOutputs run_steps(std::size_t n, int steps, float grad_scale, AdamState& ref, int offset = 0,
                      bool pass_scale_pointer = true) {
  const std::vector<float> p0 = stored<TP>(random_floats(n + offset, 1, -1.f, 1.f));
  // Moments of a run in progress, of the size the gradients below produce: |update| ~ lr.
  const std::vector<float> m0 = stored<TM>(random_normal(n + offset, 2, 0.001f));
  const std::vector<float> v0 = stored<TV>(random_floats(n + offset, 3, 1e-5f, 1e-4f));
  ref = {std::vector<double>(p0.begin() + offset, p0.end()), std::vector<double>(m0.begin() + offset, m0.end()),
         std::vector<double>(v0.begin() + offset, v0.end())};
  DeviceBuffer<TP> p(as_device_type<TP>(p0));
  DeviceBuffer<TM> m(as_device_type<TM>(m0));
  DeviceBuffer<TV> v(as_device_type<TV>(v0));
  DeviceBuffer<TG> g(n + offset);
  DeviceBuffer<float> scale(std::vector<float>{grad_scale});
  AdamWConfig c = test_config();
  for (int t = 1; t <= steps; ++t) {
    c.step = t;
    const std::vector<float> grads = stored<TG>(random_normal(n + offset, 100 + t, 0.02f));
    g.upload(as_device_type<TG>(grads));
    kernels::adamw_update(p.get() + offset, static_cast<const TG*>(g.get() + offset), m.get() + offset,
                          v.get() + offset, n, c, pass_scale_pointer ? scale.get() : nullptr, nullptr, nullptr);
    adamw_reference_step(ref, std::vector<float>(grads.begin() + offset, grads.end()),
                         pass_scale_pointer ? grad_scale : 1.0, c);
  }
  sync_and_check();
  auto tail = [offset](std::vector<float> v) { return std::vector<float>(v.begin() + offset, v.end()); };
  return {tail(as_float(p.download())), tail(as_float(m.download())), tail(as_float(v.download()))};
}

std::vector<double> difference(const std::vector<double>& a, const std::vector<double>& b) {
  std::vector<double> d(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) d[i] = a[i] - b[i];
  return d;
}
std::vector<double> difference(const std::vector<float>& a, const std::vector<double>& b) {
  return difference(std::vector<double>(a.begin(), a.end()), b);
}

// fp32 storage: relative L2 < 1e-6 after 5 steps (brief: fp32 AdamW vs double).
constexpr double kFp32Tol = 1e-6;
// bf16 moments or parameters (stochastic rounding noise of about 2^-9 relative per step): < 1e-2.
constexpr double kBf16Tol = 1e-2;
constexpr std::size_t kOddSize = 10007;  // not a multiple of the 8-element groups

// p, m and v after run_steps each within `tol` (relative L2) of the double reference.
void expect_state_within(const StepOutputs& out, const AdamState& ref, double tol) {
  EXPECT_LT(rel_l2(out.p, ref.p), tol);
  EXPECT_LT(rel_l2(out.m, ref.m), tol);
  EXPECT_LT(rel_l2(out.v, ref.v), tol);
}

TEST(AdamW, Fp32FiveStepsMatchDouble) {
  AdamState ref;
  const auto out = run_steps<float, float, float, float>(kOddSize, 5, 0.7f, ref);
  expect_state_within(out, ref, kFp32Tol);
}

TEST(AdamW, Fp32MisalignedPointersUseElementPath) {
  AdamState ref;
  const auto out = run_steps<float, float, float, float>(kOddSize, 5, 0.7f, ref, /*offset=*/1);
  expect_state_within(out, ref, kFp32Tol);
}

TEST(AdamW, Fp32NullGradScaleMeansOne) {
  AdamState ref;
  const auto out = run_steps<float, float, float, float>(kOddSize, 2, 0.25f, ref, 0, /*pass_scale_pointer=*/false);
  EXPECT_LT(rel_l2(out.p, ref.p), kFp32Tol);
  EXPECT_LT(rel_l2(out.m, ref.m), kFp32Tol);
}

TEST(AdamW, Bf16GradsFp32StateMatchDouble) {
  AdamState ref;  // the reference sees the same bf16-rounded gradients, so the fp32 tolerance holds
  const auto out = run_steps<float, nv_bfloat16, float, float>(kOddSize, 5, 0.7f, ref);
  expect_state_within(out, ref, kFp32Tol);
}

template <typename TM, typename TV>
void check_bf16_moments() {
  AdamState ref;
  const std::vector<double> p_start = [] {
    const auto p0 = random_floats(kOddSize, 1, -1.f, 1.f);
    return std::vector<double>(p0.begin(), p0.end());
  }();
  const auto out = run_steps<float, float, TM, TV>(kOddSize, 5, 0.7f, ref);
  // Compare the parameter change, not the parameters: the change is what rounding could corrupt.
  EXPECT_LT(rel_l2(difference(out.p, p_start), difference(ref.p, p_start)), kBf16Tol);
  EXPECT_LT(rel_l2(out.m, ref.m), kBf16Tol);
  EXPECT_LT(rel_l2(out.v, ref.v), kBf16Tol);
}

TEST(AdamW, Bf16MomentsMatchDouble) { check_bf16_moments<nv_bfloat16, nv_bfloat16>(); }
TEST(AdamW, Bf16FirstMomentMatchDouble) { check_bf16_moments<nv_bfloat16, float>(); }
TEST(AdamW, Bf16SecondMomentMatchDouble) { check_bf16_moments<float, nv_bfloat16>(); }

TEST(AdamW, AllBf16MatchDouble) {
  AdamState ref;
  const auto out = run_steps<nv_bfloat16, nv_bfloat16, nv_bfloat16, nv_bfloat16>(kOddSize, 5, 0.7f, ref);
  expect_state_within(out, ref, kBf16Tol);
}

// Updates 1.5 (bf16 ulp 2^-7 = 0.0078) by about 1e-4 per step for 20 steps. Round-to-nearest would
// never move it; stochastic rounding must move the mean over 2^20 elements by the expected 2e-3.
// Each step adds a rounding error of mean 0 and variance <= ulp^2 / 4 per element, so the mean of
// n elements after K steps has standard deviation <= ulp * sqrt(K / (4 n)) (1.7e-5); tolerance: 5 sd.
TEST(AdamW, Bf16StochasticRoundingIsUnbiased) {
  const std::size_t n = 1u << 20;
  const int K = 20;
  AdamWConfig c = test_config();
  c.lr = 1e-4f;
  c.weight_decay = 0.f;
  DeviceBuffer<nv_bfloat16> p(to_bf16(std::vector<float>(n, 1.5f)));
  DeviceBuffer<float> g(std::vector<float>(n, 1.f));
  DeviceBuffer<float> m(std::vector<float>(n, 0.f)), v(std::vector<float>(n, 0.f));
  AdamState ref{{1.5}, {0.0}, {0.0}};  // every element follows the same exact trajectory
  for (int t = 1; t <= K; ++t) {
    c.step = t;
    kernels::adamw_update(p.get(), static_cast<const float*>(g.get()), m.get(), v.get(), n, c, nullptr, nullptr,
                          nullptr);
    adamw_reference_step(ref, {1.f}, 1.0, c);
  }
  const std::vector<float> out = to_float(p.download());
  double mean = 0;
  for (float x : out) mean += x;
  mean /= n;
  const double expected_shift = ref.p[0] - 1.5;  // about -K * lr
  const double ulp = 1.0 / 128;
  const double sd = ulp * std::sqrt(K / (4.0 * n));
  EXPECT_NEAR(mean - 1.5, expected_shift, 5 * sd) << "expected shift " << expected_shift;
  EXPECT_LT(expected_shift, -0.9 * K * c.lr);  // sanity: the test really asks for a sub-ulp drift
}

// Random parameters, gradients and moments of type T (seeds seed .. seed + 3) on the device.
template <typename T>
struct RandomState {
  RandomState(std::size_t n, std::uint64_t seed)
      : p(as_device_type<T>(random_floats(n, seed, -1.f, 1.f))),
        g(as_device_type<T>(random_normal(n, seed + 1, 0.02f))),
        m(as_device_type<T>(random_normal(n, seed + 2, 0.01f))),
        v(as_device_type<T>(random_floats(n, seed + 3, 1e-6f, 1e-4f))) {}
  DeviceBuffer<T> p, g, m, v;

  // p, then m, then v, as stored on the device.
  std::vector<T> download_p_m_v() const {
    std::vector<T> all = p.download();
    for (const auto* b : {&m, &v}) {
      const auto part = b->download();
      all.insert(all.end(), part.begin(), part.end());
    }
    return all;
  }
};

// Same inputs and seed: bit-identical bf16 params and moments; another seed: different roundings.
TEST(AdamW, Bf16StochasticRoundingIsDeterministic) {
  const std::size_t n = 4099;
  auto run = [&](std::uint32_t seed) {
    RandomState<nv_bfloat16> s(n, 5);
    AdamWConfig c = test_config();
    c.step = 3;
    c.seed = seed;
    kernels::adamw_update(s.p.get(), static_cast<const nv_bfloat16*>(s.g.get()), s.m.get(), s.v.get(), n, c, nullptr,
                          nullptr, nullptr);
    sync_and_check();
    return s.download_p_m_v();
  };
  const auto a = run(42), b = run(42), c = run(43);
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(nv_bfloat16)), 0) << "same seed must give same bits";
  std::size_t differing = 0;
  for (std::size_t i = 0; i < a.size(); ++i) differing += std::memcmp(&a[i], &c[i], sizeof(nv_bfloat16)) != 0;
  EXPECT_GT(differing, a.size() / 20) << "another seed should change a good share of the roundings";
}

// A tensor updated in slices (index_offset = slice start) gets the same bits as one update of the
// whole: the rounding hash sees tensor indices. Slice starts not multiples of 8 also take the
// element path for misaligned pointers.
TEST(AdamW, Bf16SlicedUpdateMatchesWholeBitExactly) {
  const std::size_t n = 10007;
  // Updates [cuts[i], cuts[i + 1]) one after the other with index_offset = cuts[i] (0 if without_offset).
  auto run = [&](const std::vector<std::size_t>& cuts, bool without_offset = false) {
    RandomState<nv_bfloat16> s(n, 21);
    AdamWConfig c = test_config();
    c.step = 2;
    for (std::size_t i = 0; i + 1 < cuts.size(); ++i) {
      c.index_offset = without_offset ? 0 : cuts[i];
      kernels::adamw_update(s.p.get() + cuts[i], static_cast<const nv_bfloat16*>(s.g.get() + cuts[i]),
                            s.m.get() + cuts[i], s.v.get() + cuts[i], cuts[i + 1] - cuts[i], c, nullptr, nullptr,
                            nullptr);
    }
    sync_and_check();
    return s.download_p_m_v();
  };
  const auto whole = run({0, n});
  const auto sliced = run({0, 1003, 1011, 4096, n});
  ASSERT_EQ(whole.size(), sliced.size());
  EXPECT_EQ(std::memcmp(whole.data(), sliced.data(), whole.size() * sizeof(nv_bfloat16)), 0);
  // Without the offset the slices would reuse the bits of elements 0.. and differ.
  const auto unshifted = run({1003, n}, /*without_offset=*/true);
  std::size_t differing = 0;
  for (std::size_t i = 1003; i < n; ++i) differing += std::memcmp(&unshifted[i], &whole[i], sizeof(nv_bfloat16)) != 0;
  EXPECT_GT(differing, (n - 1003) / 20);
}

TEST(AdamW, Bf16CopyOfFp32MasterIsRoundToNearest) {
  const std::size_t n = kOddSize;
  RandomState<float> s(n, 9);
  DeviceBuffer<nv_bfloat16> copy(n);
  copy.poison();
  kernels::adamw_update(s.p.get(), static_cast<const float*>(s.g.get()), s.m.get(), s.v.get(), n, test_config(),
                        nullptr, copy.get(), nullptr);
  sync_and_check();
  const auto master = s.p.download();
  const auto out = copy.download();
  const auto expected = to_bf16(master);
  EXPECT_EQ(std::memcmp(out.data(), expected.data(), n * sizeof(nv_bfloat16)), 0);
}

TEST(AdamW, RejectsBadArguments) {
  DeviceBuffer<float> buf(16);
  const float* g = buf.get();
  AdamWConfig c = test_config();
  c.step = 0;
  EXPECT_THROW(kernels::adamw_update(buf.get(), g, buf.get(), buf.get(), 16, c, nullptr, nullptr, nullptr), Error);
  c = test_config();
  c.beta1 = 1.f;
  EXPECT_THROW(kernels::adamw_update(buf.get(), g, buf.get(), buf.get(), 16, c, nullptr, nullptr, nullptr), Error);
  c = test_config();
  c.lr = NAN;
  EXPECT_THROW(kernels::adamw_update(buf.get(), g, buf.get(), buf.get(), 16, c, nullptr, nullptr, nullptr), Error);
  c = test_config();
  EXPECT_THROW(kernels::adamw_update(buf.get(), g, buf.get(), buf.get(), std::size_t{1} << 33, c, nullptr, nullptr,
                                     nullptr),
               Error);
  EXPECT_THROW(kernels::adamw_update(buf.get(), static_cast<const float*>(nullptr), buf.get(), buf.get(), 16, c,
                                     nullptr, nullptr, nullptr),
               Error);
  c.index_offset = 0xFFFFFFFFull - 8;  // slice [2^32 - 9, 2^32 + 7) reaches past the 32-bit hash index
  EXPECT_THROW(kernels::adamw_update(buf.get(), g, buf.get(), buf.get(), 16, c, nullptr, nullptr, nullptr), Error);
}

// ---- adamw_update_multi: pieces of tensors in flat arrays --------------------------------------------

using kernels::AdamWPiece;

// `count` pieces laid out like the optimizer's flat buffers: each starts at a 128-element boundary,
// some moved 1, 4 or 5 elements off it (so bf16 and/or fp32 16-byte vectors do not fit and the
// element path runs), with poisonable padding after every piece. Sizes include 1 and many that are
// not multiples of 8 (tail groups); every fourth piece is a slice of a tensor (index_offset > 0);
// weight decay is 0 for every third piece; one extra piece is empty. Returned shuffled, so not in
// ascending order. `total` receives the array length.
std::vector<AdamWPiece> flat_layout(int count, std::size_t& total) {
  const std::uint64_t sizes[] = {1, 3, 7, 8, 9, 16, 17, 31, 100, 127, 128, 129, 1000, 2053, 4099, 20011};
  const std::size_t shifts[] = {0, 0, 1, 4, 5, 0};
  std::vector<AdamWPiece> pieces;
  std::size_t cursor = 0;
  for (int i = 0; i < count; ++i) {
    const std::size_t begin = (cursor + 127) / 128 * 128 + shifts[i % 6];
    AdamWPiece piece;
    piece.begin = static_cast<std::int64_t>(begin);
    piece.n = sizes[i % 16];
    piece.index_offset = i % 4 == 3 ? 1000 + 13 * i : 0;
    piece.seed = 7919u * static_cast<std::uint32_t>(i) + 1;
    piece.weight_decay = i % 3 == 0 ? 0.f : 0.1f;
    pieces.push_back(piece);
    cursor = begin + piece.n + 1 + (i % 3) * 5;  // at least one padding element after every piece
  }
  pieces.push_back(AdamWPiece{static_cast<std::int64_t>(cursor), 0, 0, 5, 0.1f});
  total = cursor + 64;
  std::shuffle(pieces.begin(), pieces.end(), std::mt19937(17));
  return pieces;
}

// inside[i]: element i belongs to a piece.
std::vector<bool> piece_mask(const std::vector<AdamWPiece>& pieces, std::size_t total) {
  std::vector<bool> inside(total, false);
  for (const AdamWPiece& piece : pieces)
    for (std::uint64_t i = 0; i < piece.n; ++i) inside[piece.begin + i] = true;
  return inside;
}

// Values of type T: `values` inside the pieces, 0xFF bytes (NaN) in the padding.
template <typename T>
std::vector<T> poison_padding(const std::vector<float>& values, const std::vector<bool>& inside) {
  std::vector<T> out = as_device_type<T>(values);
  for (std::size_t i = 0; i < out.size(); ++i)
    if (!inside[i]) std::memset(&out[i], 0xFF, sizeof(T));
  return out;
}

// Initial flat params / grads / moments on the host (random in the pieces, poisoned padding).
template <typename TP, typename TG, typename TM, typename TV>
struct FlatHostState {
  FlatHostState(std::size_t total, const std::vector<bool>& inside, std::uint64_t seed)
      : p(poison_padding<TP>(random_floats(total, seed, -1.f, 1.f), inside)),
        g(poison_padding<TG>(random_normal(total, seed + 1, 0.02f), inside)),
        m(poison_padding<TM>(random_normal(total, seed + 2, 0.001f), inside)),
        v(poison_padding<TV>(random_floats(total, seed + 3, 1e-5f, 1e-4f), inside)) {}
  std::vector<TP> p;
  std::vector<TG> g;
  std::vector<TM> m;
  std::vector<TV> v;
};

// A device copy of a FlatHostState, updated either by adamw_update_multi or by one adamw_update per piece.
template <typename TP, typename TG, typename TM, typename TV>
struct FlatDeviceState {
  explicit FlatDeviceState(const FlatHostState<TP, TG, TM, TV>& host) : p(host.p), g(host.g), m(host.m), v(host.v) {}
  DeviceBuffer<TP> p;
  DeviceBuffer<TG> g;
  DeviceBuffer<TM> m;
  DeviceBuffer<TV> v;

  void update_multi(const std::vector<AdamWPiece>& pieces, const AdamWConfig& shared, const float* scale) {
    kernels::adamw_update_multi(p.get(), static_cast<const TG*>(g.get()), m.get(), v.get(), pieces, shared, scale,
                                nullptr);
  }
  void update_per_piece(const std::vector<AdamWPiece>& pieces, const AdamWConfig& shared, const float* scale) {
    for (const AdamWPiece& piece : pieces) {
      AdamWConfig c = shared;
      c.weight_decay = piece.weight_decay;
      c.seed = piece.seed;
      c.index_offset = piece.index_offset;
      const std::int64_t b = piece.begin;
      kernels::adamw_update(p.get() + b, static_cast<const TG*>(g.get() + b), m.get() + b, v.get() + b, piece.n, c,
                            scale, nullptr, nullptr);
    }
  }
};

// Shared hyper-parameters; weight_decay, seed and index_offset are set to values that adamw_update_multi
// must ignore (the per-piece reference replaces them), so using them by mistake changes the bits.
AdamWConfig shared_config() {
  AdamWConfig c = test_config();
  c.step = 3;
  c.weight_decay = 0.5f;
  c.seed = 999;
  c.index_offset = 77;
  return c;
}

// Elements outside the pieces whose bytes differ between `after` and `before`.
template <typename T>
std::size_t padding_changes(const std::vector<T>& after, const std::vector<T>& before,
                            const std::vector<bool>& inside) {
  std::size_t changed = 0;
  for (std::size_t i = 0; i < after.size(); ++i)
    if (!inside[i]) changed += std::memcmp(&after[i], &before[i], sizeof(T)) != 0;
  return changed;
}

// adamw_update_multi over flat_layout(count) gives the bits of per-piece adamw_update, leaves the
// padding and the gradients untouched, and really updates the pieces.
template <typename TP, typename TG, typename TM, typename TV>
void check_multi_matches_per_piece(int count) {
  std::size_t total = 0;
  const std::vector<AdamWPiece> pieces = flat_layout(count, total);
  const std::vector<bool> inside = piece_mask(pieces, total);
  const FlatHostState<TP, TG, TM, TV> host(total, inside, 31);
  FlatDeviceState<TP, TG, TM, TV> multi(host), per_piece(host);
  DeviceBuffer<float> scale(std::vector<float>{0.7f});
  multi.update_multi(pieces, shared_config(), scale.get());
  per_piece.update_per_piece(pieces, shared_config(), scale.get());
  sync_and_check();

  const auto p = multi.p.download();
  const auto m = multi.m.download();
  const auto v = multi.v.download();
  EXPECT_TRUE(same_bits(p, per_piece.p.download())) << "params differ from per-piece adamw_update";
  EXPECT_TRUE(same_bits(m, per_piece.m.download())) << "m differs from per-piece adamw_update";
  EXPECT_TRUE(same_bits(v, per_piece.v.download())) << "v differs from per-piece adamw_update";
  EXPECT_TRUE(same_bits(multi.g.download(), host.g)) << "gradients must stay unchanged";
  EXPECT_EQ(padding_changes(p, host.p, inside), 0u) << "params padding touched";
  EXPECT_EQ(padding_changes(m, host.m, inside), 0u) << "m padding touched";
  EXPECT_EQ(padding_changes(v, host.v, inside), 0u) << "v padding touched";
  // Both paths doing nothing would also agree: m (0.9 m + 0.1 g, |g| >> |m|) must change almost everywhere.
  const auto inside_count = static_cast<std::size_t>(std::count(inside.begin(), inside.end(), true));
  std::size_t m_changed = 0;
  for (std::size_t i = 0; i < total; ++i)
    if (inside[i]) m_changed += std::memcmp(&m[i], &host.m[i], sizeof(TM)) != 0;
  EXPECT_GT(m_changed, inside_count * 9 / 10);
}

// 150 pieces: three launches of up to 64.
TEST(AdamWMulti, Fp32MatchesPerPieceBitExactly) { check_multi_matches_per_piece<float, float, float, float>(150); }
TEST(AdamWMulti, AllBf16MatchesPerPieceBitExactly) {
  check_multi_matches_per_piece<nv_bfloat16, nv_bfloat16, nv_bfloat16, nv_bfloat16>(150);
}
TEST(AdamWMulti, MixedTypesMatchPerPieceBitExactly) {
  check_multi_matches_per_piece<float, nv_bfloat16, nv_bfloat16, float>(150);
}
// Piece counts around the launch size: one piece, one partial launch, exactly one full launch, one more.
TEST(AdamWMulti, LaunchBoundariesMatchPerPieceBitExactly) {
  for (int count : {1, 5, 64, 65, 128, 129}) {
    SCOPED_TRACE(count);
    check_multi_matches_per_piece<nv_bfloat16, float, float, nv_bfloat16>(count);
  }
}

// fp32 storage against the double reference (adamw_reference_step per piece with its weight decay):
// relative L2 < kFp32Tol (1e-6) for params, m and v over all pieces.
TEST(AdamWMulti, Fp32MatchesDouble) {
  std::size_t total = 0;
  const std::vector<AdamWPiece> pieces = flat_layout(70, total);
  const std::vector<bool> inside = piece_mask(pieces, total);
  const FlatHostState<float, float, float, float> host(total, inside, 41);
  FlatDeviceState<float, float, float, float> state(host);
  DeviceBuffer<float> scale(std::vector<float>{0.7f});
  const AdamWConfig shared = shared_config();
  state.update_multi(pieces, shared, scale.get());
  sync_and_check();
  const auto p = state.p.download(), m = state.m.download(), v = state.v.download();

  std::vector<float> out_p, out_m, out_v;
  std::vector<double> ref_p, ref_m, ref_v;
  for (const AdamWPiece& piece : pieces) {
    const auto b = static_cast<std::size_t>(piece.begin), e = b + piece.n;
    AdamState ref{{host.p.begin() + b, host.p.begin() + e}, {host.m.begin() + b, host.m.begin() + e},
                  {host.v.begin() + b, host.v.begin() + e}};
    AdamWConfig c = shared;
    c.weight_decay = piece.weight_decay;
    adamw_reference_step(ref, std::vector<float>(host.g.begin() + b, host.g.begin() + e), 0.7, c);
    out_p.insert(out_p.end(), p.begin() + b, p.begin() + e);
    out_m.insert(out_m.end(), m.begin() + b, m.begin() + e);
    out_v.insert(out_v.end(), v.begin() + b, v.begin() + e);
    ref_p.insert(ref_p.end(), ref.p.begin(), ref.p.end());
    ref_m.insert(ref_m.end(), ref.m.begin(), ref.m.end());
    ref_v.insert(ref_v.end(), ref.v.begin(), ref.v.end());
  }
  EXPECT_LT(rel_l2(out_p, ref_p), kFp32Tol);
  EXPECT_LT(rel_l2(out_m, ref_m), kFp32Tol);
  EXPECT_LT(rel_l2(out_v, ref_v), kFp32Tol);
}

// No pieces, or only empty ones: nothing is written (and null pointers are accepted).
TEST(AdamWMulti, ZeroPiecesTouchNothing) {
  const std::size_t total = 1000;
  const std::vector<bool> inside(total, true);
  const FlatHostState<nv_bfloat16, nv_bfloat16, float, float> host(total, inside, 51);
  FlatDeviceState<nv_bfloat16, nv_bfloat16, float, float> state(host);
  state.update_multi({}, shared_config(), nullptr);
  state.update_multi({AdamWPiece{0, 0, 0, 1, 0.1f}, AdamWPiece{500, 0, 0, 2, 0.f}}, shared_config(), nullptr);
  sync_and_check();
  EXPECT_TRUE(same_bits(state.p.download(), host.p));
  EXPECT_TRUE(same_bits(state.m.download(), host.m));
  EXPECT_TRUE(same_bits(state.v.download(), host.v));
  EXPECT_NO_THROW(kernels::adamw_update_multi(static_cast<float*>(nullptr), static_cast<const float*>(nullptr),
                                              static_cast<float*>(nullptr), static_cast<float*>(nullptr), {},
                                              shared_config(), nullptr, nullptr));
}

// Every bad piece list throws before anything is launched: the arrays stay unchanged.
TEST(AdamWMulti, RejectsBadPieces) {
  const std::size_t total = 256;
  const std::vector<bool> inside(total, true);
  const FlatHostState<float, float, float, float> host(total, inside, 61);
  FlatDeviceState<float, float, float, float> state(host);
  const AdamWConfig c = shared_config();
  const AdamWPiece good{0, 64, 0, 1, 0.1f};
  auto multi = [&](const std::vector<AdamWPiece>& pieces, const AdamWConfig& config) {
    state.update_multi(pieces, config, nullptr);
  };
  expect_error([&] { multi({good, AdamWPiece{64, 16, 0xFFFFFFFFull - 8, 2, 0.f}}, c); }, "2^32");
  expect_error([&] { multi({good, AdamWPiece{64, std::uint64_t{1} << 33, 0, 2, 0.f}}, c); }, "2^32");
  expect_error([&] { multi({good, AdamWPiece{32, 64, 0, 2, 0.f}}, c); }, "overlap");
  expect_error([&] { multi({good, AdamWPiece{-8, 4, 0, 2, 0.f}}, c); }, "begins at element -8");
  expect_error([&] { multi({good, AdamWPiece{64, 16, 0, 2, NAN}}, c); }, "weight decay");
  AdamWConfig step0 = c;
  step0.step = 0;
  expect_error([&] { multi({good}, step0); }, "step 0");
  expect_error(
      [&] {
        kernels::adamw_update_multi(state.p.get(), static_cast<const float*>(nullptr), state.m.get(), state.v.get(),
                                    {good}, c, nullptr, nullptr);
      },
      "null");
  sync_and_check();
  EXPECT_TRUE(same_bits(state.p.download(), host.p));
  EXPECT_TRUE(same_bits(state.m.download(), host.m));
  EXPECT_TRUE(same_bits(state.v.download(), host.v));
}

}  // namespace
}  // namespace llmq::test
