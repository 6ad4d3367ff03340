#include <gtest/gtest.h>

#include <cstdlib>
#include <map>

#include "core/allocator.h"

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

TEST(Allocator, BudgetRefusesWithCategoryListing) {
  Allocator alloc(std::size_t{1} << 20, std::make_unique<FakeDevice>(1 << 30));
  alloc.allocate_bytes("adam m", 600 << 10, MemCategory::AdamM);
  try {
    alloc.allocate_bytes("adam v", 600 << 10, MemCategory::AdamV);
    FAIL() << "expected OutOfMemory";
  } catch (const OutOfMemory& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("adam v"), std::string::npos);
    EXPECT_NE(msg.find("--memory-limit"), std::string::npos);
    EXPECT_NE(msg.find("Adam M"), std::string::npos);
    EXPECT_NE(msg.find("Activations"), std::string::npos);
  }
  // Pinned host memory does not count against the device budget.
  EXPECT_NO_THROW(alloc.allocate_bytes("master", 2 << 20, MemCategory::Master, MemKind::Pinned));
}

TEST(Allocator, BackendOutOfMemoryIsReported) {
  Allocator alloc(std::nullopt, std::make_unique<FakeDevice>(1000));
  EXPECT_THROW(alloc.allocate_bytes("too big", 4096, MemCategory::Other), OutOfMemory);
}

TEST(Allocator, ReleasingForeignPointerThrows) {
  Allocator alloc(std::nullopt, std::make_unique<FakeDevice>(1 << 20));
  int x;
  EXPECT_THROW(alloc.release(&x), Error);
}
