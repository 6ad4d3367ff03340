#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <regex>

#include "core/allocator.h"
#include "model/memory_hints.h"
#include "training/options.h"

using namespace llmq;

namespace {
// A pretend GPU of a given size, backed by host malloc.
class FakeDevice final : public MemoryBackend {
 public:
  explicit FakeDevice(std::size_t total) : total_(total) {}
  void* allocate(std::size_t bytes, MemKind) override {
    if (used_ + bytes > total_) return nullptr;
    used_ += bytes;
    void* p = std::malloc(bytes);
    sizes_[p] = bytes;
    return p;
  }
  void release(void* ptr, MemKind) override {
    used_ -= sizes_[ptr];
    sizes_.erase(ptr);
    std::free(ptr);
  }
  std::size_t device_total_bytes() const override { return total_; }

 private:
  std::size_t total_, used_ = 0;
  std::map<void*, std::size_t> sizes_;
};
}  // namespace

TEST(ByteSize, ParsesUnits) {
  EXPECT_EQ(parse_byte_size("16GiB"), 16ull << 30);
  EXPECT_EQ(parse_byte_size("512MiB"), 512ull << 20);
  EXPECT_EQ(parse_byte_size("24GB"), 24000000000ull);
  EXPECT_EQ(parse_byte_size("1.5GiB"), 3ull << 29);
  EXPECT_EQ(parse_byte_size("4096"), 4096u);
  EXPECT_THROW(parse_byte_size("lots"), Error);
  EXPECT_THROW(parse_byte_size("16XB"), Error);
  EXPECT_THROW(parse_byte_size("-1GiB"), Error);
}

TEST(Allocator, TracksCategoriesAndPeak) {
  Allocator alloc(std::nullopt, std::make_unique<FakeDevice>(1 << 30));
  Tensor w = alloc.allocate("weights", DType::BF16, {1024, 512}, MemCategory::Weights);
  Tensor a = alloc.allocate("acts", DType::FP32, {256}, MemCategory::Activations);
  EXPECT_EQ(alloc.in_use(MemCategory::Weights, MemKind::Device), 1024u * 512 * 2);
  EXPECT_EQ(alloc.in_use(MemCategory::Activations, MemKind::Device), 1024u);
  std::size_t peak = alloc.device_in_use();
  alloc.release(a);
  EXPECT_EQ(alloc.in_use(MemCategory::Activations, MemKind::Device), 0u);
  EXPECT_EQ(alloc.device_peak(), peak);
  std::string report = alloc.state_report();
  EXPECT_NE(report.find("[Allocator State]"), std::string::npos);
  EXPECT_NE(report.find("Weights"), std::string::npos);
  alloc.release(w);
}

namespace {
// Distinct, recognisable hint per category so that a test can tell which ones a message shows.
ShrinkHints test_hints() {
  ShrinkHints hints;
  for (std::size_t c = 0; c < kMemCategoryCount; ++c)
    hints[c] = "hint-for-" + std::string(category_name(static_cast<MemCategory>(c)));
  return hints;
}

std::string oom_message(Allocator& alloc, const std::string& name, std::size_t bytes, MemCategory category,
                        MemKind kind = MemKind::Device) {
  try {
    alloc.allocate_bytes(name, bytes, category, kind);
  } catch (const OutOfMemory& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected OutOfMemory for '" << name << "'";
  return {};
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// Six device categories in use: 4 MiB Activations, 3 MiB Weights, 2 MiB Adam M, 1 MiB Gradients,
// then two small ones that must not make the top four.
void fill_six_categories(Allocator& alloc) {
  alloc.allocate_bytes("acts", 4 << 20, MemCategory::Activations);
  alloc.allocate_bytes("weights", 3 << 20, MemCategory::Weights);
  alloc.allocate_bytes("adam m", 2 << 20, MemCategory::AdamM);
  alloc.allocate_bytes("gradients", 1 << 20, MemCategory::Gradients);
  alloc.allocate_bytes("cublas workspace", 2 << 10, MemCategory::Workspace);
  alloc.allocate_bytes("rope table", 1 << 10, MemCategory::Other);
}
}  // namespace

TEST(Allocator, BudgetOomNamesAllocationBiggestCategoriesAndHints) {
  Allocator alloc(std::size_t{11} << 20, std::make_unique<FakeDevice>(std::size_t{1} << 30));
  alloc.set_shrink_hints(test_hints());
  fill_six_categories(alloc);
  const std::size_t used = alloc.device_in_use();
  std::string msg = oom_message(alloc, "adam v", 2 << 20, MemCategory::AdamV);

  EXPECT_TRUE(contains(msg, "'adam v' (Adam V) needs 2.0 MiB of device memory")) << msg;
  EXPECT_TRUE(contains(msg, "--memory-limit is 11.0 MiB and 10.0 MiB of it is in use")) << msg;
  // Top four, biggest first, each with its size and hint.
  std::size_t acts = msg.find("Activations"), weights = msg.find("Weights"), m = msg.find("Adam M"),
              grads = msg.find("Gradients");
  ASSERT_NE(grads, std::string::npos) << msg;
  EXPECT_LT(acts, weights);
  EXPECT_LT(weights, m);
  EXPECT_LT(m, grads);
  EXPECT_TRUE(contains(msg, "4.0 MiB   shrink: hint-for-Activations")) << msg;
  EXPECT_TRUE(contains(msg, "3.0 MiB   shrink: hint-for-Weights")) << msg;
  EXPECT_TRUE(contains(msg, "hint-for-Adam M")) << msg;
  EXPECT_TRUE(contains(msg, "hint-for-Gradients")) << msg;
  // The small categories are left out; the failing category still gets its hint.
  EXPECT_FALSE(contains(msg, "Workspace")) << msg;
  EXPECT_FALSE(contains(msg, "Other")) << msg;
  EXPECT_TRUE(contains(msg, "Adam V (this allocation) shrinks with: hint-for-Adam V")) << msg;
  EXPECT_TRUE(contains(msg, "Raise --memory-limit")) << msg;
  EXPECT_LE(std::count(msg.begin(), msg.end(), '\n'), 8) << msg;
  // The refused allocation left the books unchanged.
  EXPECT_EQ(alloc.device_in_use(), used);
  EXPECT_EQ(alloc.in_use(MemCategory::AdamV, MemKind::Device), 0u);
}

TEST(Allocator, FailingCategoryAmongTheBiggestIsListedOnce) {
  Allocator alloc(std::size_t{11} << 20, std::make_unique<FakeDevice>(std::size_t{1} << 30));
  alloc.set_shrink_hints(test_hints());
  fill_six_categories(alloc);
  std::string msg = oom_message(alloc, "more activations", 2 << 20, MemCategory::Activations);
  EXPECT_TRUE(contains(msg, "'more activations' (Activations)")) << msg;
  EXPECT_FALSE(contains(msg, "this allocation")) << msg;
  auto first = msg.find("hint-for-Activations");
  ASSERT_NE(first, std::string::npos) << msg;
  EXPECT_EQ(msg.find("hint-for-Activations", first + 1), std::string::npos) << msg;
}

TEST(Allocator, OomWithoutHintsIsStillClear) {
  Allocator alloc(std::size_t{1} << 20, std::make_unique<FakeDevice>(std::size_t{1} << 30));
  alloc.allocate_bytes("adam m", 600 << 10, MemCategory::AdamM);
  std::string msg = oom_message(alloc, "adam v", 600 << 10, MemCategory::AdamV);
  EXPECT_TRUE(contains(msg, "'adam v' (Adam V) needs 600.0 KiB")) << msg;
  EXPECT_TRUE(contains(msg, "--memory-limit is 1.0 MiB and 600.0 KiB of it is in use (424.0 KiB free)")) << msg;
  EXPECT_TRUE(contains(msg, "Biggest device users:")) << msg;
  EXPECT_TRUE(contains(msg, "Adam M")) << msg;
  EXPECT_FALSE(contains(msg, "shrink")) << msg;
  // Pinned host memory does not count against the device budget.
  EXPECT_NO_THROW(alloc.allocate_bytes("master", 2 << 20, MemCategory::Master, MemKind::Pinned));
}

TEST(Allocator, EmptyHintsAreNotShown) {
  Allocator alloc(std::size_t{1} << 20, std::make_unique<FakeDevice>(std::size_t{1} << 30));
  ShrinkHints hints = test_hints();
  hints[static_cast<std::size_t>(MemCategory::Workspace)] = "";
  alloc.set_shrink_hints(hints);
  alloc.allocate_bytes("workspace", 900 << 10, MemCategory::Workspace);
  std::string msg = oom_message(alloc, "scratch", 200 << 10, MemCategory::Other);
  EXPECT_TRUE(contains(msg, "Workspace")) << msg;
  EXPECT_FALSE(contains(msg, "shrink: \n")) << msg;
  EXPECT_FALSE(contains(msg, "hint-for-Workspace")) << msg;
  EXPECT_TRUE(contains(msg, "Other (this allocation) shrinks with: hint-for-Other")) << msg;
}

TEST(Allocator, BackendOutOfMemoryNamesGpuSizeAndCategories) {
  Allocator alloc(std::nullopt, std::make_unique<FakeDevice>(std::size_t{1} << 20));
  alloc.set_shrink_hints(test_hints());
  alloc.allocate_bytes("acts", 600 << 10, MemCategory::Activations);
  std::string msg = oom_message(alloc, "weights", 600 << 10, MemCategory::Weights);
  EXPECT_TRUE(contains(msg, "'weights' (Weights) needs 600.0 KiB of device memory")) << msg;
  EXPECT_TRUE(contains(msg, "the GPU (1.0 MiB) has no room for it: llmq holds 600.0 KiB")) << msg;
  EXPECT_TRUE(contains(msg, "600.0 KiB   shrink: hint-for-Activations")) << msg;
  EXPECT_TRUE(contains(msg, "Weights (this allocation) shrinks with: hint-for-Weights")) << msg;
  EXPECT_FALSE(contains(msg, "--memory-limit")) << msg;  // no budget was given
  EXPECT_EQ(alloc.in_use(MemCategory::Weights, MemKind::Device), 0u);
  EXPECT_NO_THROW(alloc.allocate_bytes("small", 1 << 10, MemCategory::Weights));
}

TEST(Allocator, BackendOutOfMemoryUnderAnUnreachedBudget) {
  Allocator alloc(std::size_t{1} << 30, std::make_unique<FakeDevice>(std::size_t{1} << 20));
  std::string msg = oom_message(alloc, "too big", 4 << 20, MemCategory::Other);
  EXPECT_TRUE(contains(msg, "'too big' (Other) needs 4.0 MiB")) << msg;
  EXPECT_TRUE(contains(msg, "--memory-limit of 1.00 GiB is not reached")) << msg;
  EXPECT_TRUE(contains(msg, "Nothing else is on the device yet")) << msg;
  EXPECT_FALSE(contains(msg, "Raise --memory-limit")) << msg;  // raising it would not help
}

TEST(Allocator, HostOutOfMemoryIsReported) {
  Allocator alloc(std::nullopt, std::make_unique<FakeDevice>(std::size_t{1} << 20));
  std::string msg = oom_message(alloc, "master", 4 << 20, MemCategory::Master, MemKind::Pinned);
  EXPECT_TRUE(contains(msg, "'master' (Master) needs 4.0 MiB of pinned host memory")) << msg;
  EXPECT_TRUE(contains(msg, "the host refused it")) << msg;
}

TEST(MemoryShrinkHints, CoverTheBigCategoriesWithRealFlags) {
  ShrinkHints hints = memory_shrink_hints();
  for (MemCategory c : {MemCategory::Weights, MemCategory::Master, MemCategory::Gradients, MemCategory::AdamM,
                        MemCategory::AdamV, MemCategory::Activations, MemCategory::Quants})
    EXPECT_FALSE(hints[static_cast<std::size_t>(c)].empty()) << category_name(c);
  EXPECT_TRUE(hints[static_cast<std::size_t>(MemCategory::Workspace)].empty());
  EXPECT_TRUE(hints[static_cast<std::size_t>(MemCategory::Other)].empty());
  EXPECT_TRUE(contains(hints[static_cast<std::size_t>(MemCategory::AdamM)], "--opt-m-dtype=bf16"));
  EXPECT_TRUE(contains(hints[static_cast<std::size_t>(MemCategory::Activations)], "--recompute-block"));

  // Every flag a hint names is one `train --help` lists ("--recompute-*" is checked as its prefix).
  const std::string help = options_help();
  const std::regex flag_pattern("--[a-z0-9-]+");
  int flags_seen = 0;
  for (const std::string& hint : hints) {
    for (std::sregex_iterator it(hint.begin(), hint.end(), flag_pattern), end; it != end; ++it, ++flags_seen)
      EXPECT_TRUE(contains(help, it->str())) << it->str() << " (in hint: " << hint << ")";
  }
  EXPECT_GE(flags_seen, 12);
}

TEST(Allocator, ReleasingForeignPointerThrows) {
  Allocator alloc(std::nullopt, std::make_unique<FakeDevice>(1 << 20));
  int x;
  EXPECT_THROW(alloc.release(&x), Error);
}
