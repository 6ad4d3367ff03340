// Token embedding (src/kernels/embedding.cu) against plain CPU loops that mirror the head comment:
// lookup, zero rows for out-of-range tokens, the host-side backward plan, the gradient scatter-add with
// heavily repeated tokens (accumulating into existing values), bit-reproducibility and bad inputs.
// Tolerances (relative L2 over the compared tensor): fp32 < 1e-5, bf16 < 1e-2 (the reference sees the
// inputs rounded through bf16, exactly as the device does).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "gpu_test_utils.h"
#include "kernels/embedding.h"

namespace llmq::test {
namespace {

std::vector<std::int32_t> random_tokens(int N, int V, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::int32_t> tokens(N);
  for (auto& t : tokens) t = static_cast<std::int32_t>(rng() % V);
  return tokens;
}

// out[n, :] = wte[tokens[n], :], zeros for tokens outside [0, V).
std::vector<double> forward_reference(const std::vector<std::int32_t>& tokens, const std::vector<float>& wte, int V,
                                      int C) {
  std::vector<double> out(tokens.size() * C, 0.0);
  for (std::size_t n = 0; n < tokens.size(); ++n) {
    if (tokens[n] < 0 || tokens[n] >= V) continue;
    for (int c = 0; c < C; ++c) out[n * C + c] = wte[static_cast<std::size_t>(tokens[n]) * C + c];
  }
  return out;
}

// dwte[v, :] = dwte_before[v, :] + sum_{n: tokens[n] == v} dout[n, :], skipping tokens outside [0, V).
std::vector<double> backward_reference(const std::vector<std::int32_t>& tokens, const std::vector<float>& dout,
                                       const std::vector<float>& dwte_before, int V, int C) {
  std::vector<double> dwte(dwte_before.begin(), dwte_before.end());
  for (std::size_t n = 0; n < tokens.size(); ++n) {
    if (tokens[n] < 0 || tokens[n] >= V) continue;
    for (int c = 0; c < C; ++c) dwte[static_cast<std::size_t>(tokens[n]) * C + c] += dout[n * C + c];
  }
  return dwte;
}

// Rows of a [V, C] table, as a flat list, restricted to the ids in `rows`.
template <typename A>
std::vector<A> select_rows(const std::vector<A>& table, const std::set<int>& rows, int C) {
  std::vector<A> out;
  for (int r : rows)
    out.insert(out.end(), table.begin() + static_cast<long>(r) * C, table.begin() + static_cast<long>(r + 1) * C);
  return out;
}

std::set<int> valid_ids(const std::vector<std::int32_t>& tokens, int V) {
  std::set<int> ids;
  for (auto t : tokens)
    if (t >= 0 && t < V) ids.insert(t);
  return ids;
}

template <typename T>
class EmbeddingTest : public ::testing::Test {};
TYPED_TEST_SUITE(EmbeddingTest, FloatAndBf16);

constexpr int kV = 1000;
constexpr int kC = 296;         // 74 fp32 / 37 bf16 vectors: partial 32-vector chunks in the backward
constexpr int kN = 3 * 37 + 1;  // 112 rows

// Runs the backward on the device from dwte_before and returns the downloaded dwte.
template <typename T, typename TG = T>
std::vector<TG> run_backward(const std::vector<std::int32_t>& tokens, const std::vector<T>& dout,
                             const std::vector<TG>& dwte_before, int V, int C) {
  const int N = static_cast<int>(tokens.size());
  const kernels::EmbeddingBackwardPlan plan = kernels::make_embedding_backward_plan(tokens.data(), N);
  DeviceBuffer<std::int32_t> d_plan(plan.data);
  DeviceBuffer<T> d_dout(dout);
  DeviceBuffer<TG> d_dwte(dwte_before);
  kernels::embedding_backward(d_dwte.get(), d_dout.get(), d_plan.get(), N, V, C, nullptr);
  sync_and_check();
  return d_dwte.download();
}

// The lookup of `tokens` in a random [kV, kC] table (seed wte_seed, values of type T) on the device; returns
// the downloaded output and expects it equal to forward_reference: a lookup is a copy, it must be exact.
template <typename T>
std::vector<float> check_forward(const std::vector<std::int32_t>& tokens, std::uint64_t wte_seed) {
  const int N = static_cast<int>(tokens.size());
  const auto wte = representable<T>(random_floats(static_cast<std::size_t>(kV) * kC, wte_seed));
  DeviceBuffer<std::int32_t> d_tokens(tokens);
  DeviceBuffer<T> d_wte(as_device_type<T>(wte)), d_out(static_cast<std::size_t>(N) * kC);
  d_out.poison();
  kernels::embedding_forward(d_out.get(), d_tokens.get(), d_wte.get(), N, kV, kC, nullptr);
  sync_and_check();
  const auto out = as_float(d_out.download());
  EXPECT_EQ(rel_l2(out, forward_reference(tokens, wte, kV, kC)), 0.0) << "a lookup is a copy: it must be exact";
  return out;
}

TYPED_TEST(EmbeddingTest, ForwardCopiesRows) {
  auto tokens = random_tokens(kN, kV, 1);
  tokens[0] = 0;
  tokens[1] = kV - 1;
  tokens[2] = tokens[3] = tokens[4] = 17;  // repeats
  check_forward<TypeParam>(tokens, 2);
}

TYPED_TEST(EmbeddingTest, ForwardGivesZeroRowsForOutOfRangeTokens) {
  auto tokens = random_tokens(kN, kV, 3);
  tokens[5] = -1;
  tokens[6] = kV;
  tokens[kN - 1] = 1 << 30;
  const auto out = check_forward<TypeParam>(tokens, 4);
  for (int n : {5, 6, kN - 1}) {
    for (int c = 0; c < kC; ++c)
      ASSERT_EQ(out[static_cast<std::size_t>(n) * kC + c], 0.f) << "row " << n << " col " << c;
  }
}

TEST(EmbeddingPlan, GroupsPositionsByToken) {
  const std::vector<std::int32_t> tokens = {5, 2, 5, 9, 2, 5};
  const auto plan = kernels::make_embedding_backward_plan(tokens.data(), 6);
  const int N = 6;
  ASSERT_EQ(plan.data.size(), kernels::embedding_backward_plan_elements(N));
  EXPECT_EQ(plan.num_positions, N);
  EXPECT_EQ(plan.num_unique, 3);
  EXPECT_EQ(plan.data[0], 3);
  const std::vector<std::int32_t> unique(plan.data.begin() + 1, plan.data.begin() + 1 + 3);
  const std::vector<std::int32_t> offsets(plan.data.begin() + 1 + N, plan.data.begin() + 1 + N + 4);
  const std::vector<std::int32_t> positions(plan.data.begin() + 2 + 2 * N, plan.data.end());
  EXPECT_EQ(unique, (std::vector<std::int32_t>{2, 5, 9}));
  EXPECT_EQ(offsets, (std::vector<std::int32_t>{0, 2, 5, 6}));
  EXPECT_EQ(positions, (std::vector<std::int32_t>{1, 4, 0, 2, 5, 3}));
}

TEST(EmbeddingPlan, RejectsEmptyInput) {
  const std::int32_t token = 0;
  EXPECT_THROW(kernels::make_embedding_backward_plan(&token, 0), Error);
  EXPECT_THROW(kernels::make_embedding_backward_plan(nullptr, 4), Error);
}

// One backward run, downloaded as float, next to its reference.
struct BackwardCase {
  std::vector<float> dwte, dwte_before;
  std::vector<double> ref;
  std::set<int> touched;  // the rows with gradient
  int C;
  // Relative L2 of dwte against the reference over the rows with gradient.
  double touched_error() const { return rel_l2(select_rows(dwte, touched, C), select_rows(ref, touched, C)); }
};

// The backward for `tokens` from random dout [N, C] of type T and dwte_before [V, C] of type TG (seeds
// dout_seed and before_seed).
template <typename T, typename TG = T>
BackwardCase backward_case(const std::vector<std::int32_t>& tokens, int V, int C, std::uint64_t dout_seed,
                           std::uint64_t before_seed) {
  const auto dout = representable<T>(random_floats(tokens.size() * static_cast<std::size_t>(C), dout_seed));
  const auto dwte_before = representable<TG>(random_floats(static_cast<std::size_t>(V) * C, before_seed));
  auto dwte = as_float(run_backward<T, TG>(tokens, as_device_type<T>(dout), as_device_type<TG>(dwte_before), V, C));
  return {std::move(dwte), dwte_before, backward_reference(tokens, dout, dwte_before, V, C), valid_ids(tokens, V), C};
}

TYPED_TEST(EmbeddingTest, BackwardAccumulatesRepeatedTokens) {
  auto tokens = random_tokens(kN, kV, 5);
  for (int n = 0; n < kN; n += 3) tokens[n] = 7;  // 38 copies of one token
  tokens[1] = tokens[2] = kV - 1;
  const BackwardCase b = backward_case<TypeParam>(tokens, kV, kC, 6, 7);
  EXPECT_LT(b.touched_error(), tolerance<TypeParam>()) << "rows with gradient";
  // Every other row must keep its previous value bit for bit.
  for (int v = 0; v < kV; ++v) {
    if (b.touched.count(v)) continue;
    for (int c = 0; c < kC; ++c) {
      ASSERT_EQ(b.dwte[static_cast<std::size_t>(v) * kC + c], b.dwte_before[static_cast<std::size_t>(v) * kC + c])
          << "untouched row " << v;
    }
  }
}

// Thousands of copies of one token: the case a per-position scatter gets wrong without atomics.
TYPED_TEST(EmbeddingTest, BackwardManyCopiesOfOneToken) {
  const int N = 2048, V = 50, C = 904;
  std::vector<std::int32_t> tokens(N, 3);
  tokens[100] = 4;
  tokens[N - 1] = 0;
  const BackwardCase b = backward_case<TypeParam>(tokens, V, C, 8, 9);
  EXPECT_LT(b.touched_error(), tolerance<TypeParam>());
  EXPECT_LT(rel_l2(b.dwte, b.ref), tolerance<TypeParam>());
}

TEST(Embedding, BackwardBf16GradientIntoFp32Table) {
  const BackwardCase b = backward_case<nv_bfloat16, float>(random_tokens(kN, 30, 16), kV, kC, 17, 18);
  EXPECT_LT(b.touched_error(), 1e-5) << "fp32 accumulation";
}

TYPED_TEST(EmbeddingTest, BackwardIsBitReproducible) {
  using T = TypeParam;
  auto tokens = random_tokens(kN, 20, 10);  // a small vocabulary: every id repeats
  const auto dout = as_device_type<T>(random_floats(static_cast<std::size_t>(kN) * kC, 11));
  const auto dwte_before = as_device_type<T>(random_floats(static_cast<std::size_t>(kV) * kC, 12));
  const auto first = as_float(run_backward<T>(tokens, dout, dwte_before, kV, kC));
  const auto second = as_float(run_backward<T>(tokens, dout, dwte_before, kV, kC));
  ASSERT_EQ(first.size(), second.size());
  EXPECT_EQ(std::memcmp(first.data(), second.data(), first.size() * sizeof(float)), 0);
}

TYPED_TEST(EmbeddingTest, BackwardSkipsOutOfRangeTokens) {
  auto tokens = random_tokens(kN, kV, 13);
  tokens[0] = -3;
  tokens[10] = kV;
  tokens[11] = kV + 100;
  const BackwardCase b = backward_case<TypeParam>(tokens, kV, kC, 14, 15);
  EXPECT_LT(b.touched_error(), tolerance<TypeParam>());
  EXPECT_LT(rel_l2(b.dwte, b.ref), tolerance<TypeParam>());
}

TEST(Embedding, RejectsBadShapes) {
  DeviceBuffer<float> wte(64 * 16), out(4 * 16);
  DeviceBuffer<std::int32_t> tokens(std::vector<std::int32_t>{0, 1, 2, 3});
  EXPECT_THROW(kernels::embedding_forward(out.get(), tokens.get(), wte.get(), 4, 64, 12, nullptr), Error);  // C % 8
  EXPECT_THROW(kernels::embedding_forward(out.get(), tokens.get(), wte.get(), 0, 64, 16, nullptr), Error);
  EXPECT_THROW(kernels::embedding_forward(out.get() + 1, tokens.get(), wte.get(), 4, 64, 8, nullptr),
               Error);                                                                                  // misaligned
  EXPECT_THROW(kernels::embedding_backward(wte.get(), out.get(), nullptr, 4, 64, 16, nullptr), Error);  // no plan
  EXPECT_THROW(kernels::embedding_backward(wte.get(), out.get(), tokens.get(), 4, 64, 20, nullptr), Error);
  sync_and_check();
}

// Qwen2.5-0.5B shapes (16 x 1024 tokens, C = 896, bf16; vocabulary cut to 32768 rows to keep the host
// setup short: the rows read are random either way). Prints the effective bandwidth.
TEST(Embedding, BandwidthAtQwenShapes) {
  const int N = 16 * 1024, V = 32768, C = 896;
  auto tokens = random_tokens(N, V, 91);
  for (int n = 0; n < N; n += 20) tokens[n] = 0;  // one frequent token, like <|endoftext|> or ","
  DeviceBuffer<std::int32_t> d_tokens(tokens);
  DeviceBuffer<nv_bfloat16> d_wte(to_bf16(random_floats(static_cast<std::size_t>(V) * C, 92)));
  DeviceBuffer<nv_bfloat16> d_out(static_cast<std::size_t>(N) * C);
  const double row_bytes = C * sizeof(nv_bfloat16);
  const double fwd_ms =
      mean_ms([&] { kernels::embedding_forward(d_out.get(), d_tokens.get(), d_wte.get(), N, V, C, nullptr); });
  report_bandwidth("embedding_forward bf16 N=16384 C=896", 2.0 * N * row_bytes + N * 4.0, fwd_ms);

  const auto plan = kernels::make_embedding_backward_plan(tokens.data(), N);
  DeviceBuffer<std::int32_t> d_plan(plan.data);
  const double bwd_ms =
      mean_ms([&] { kernels::embedding_backward(d_wte.get(), d_out.get(), d_plan.get(), N, V, C, nullptr); });
  report_bandwidth("embedding_backward bf16 N=16384 C=896",
                   N * row_bytes + 2.0 * plan.num_unique * row_bytes + plan.data.size() * 4.0, bwd_ms);
  EXPECT_TRUE(all_finite(to_float(d_wte.download())));
}

}  // namespace
}  // namespace llmq::test
