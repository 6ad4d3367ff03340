#include <gtest/gtest.h>

#include "core/dtype.h"
#include "core/tensor.h"

using namespace llmq;

TEST(DType, SizesAndNames) {
  EXPECT_EQ(dtype_size(DType::FP32), 4u);
  EXPECT_EQ(dtype_size(DType::BF16), 2u);
  EXPECT_EQ(dtype_size(DType::E4M3), 1u);
  EXPECT_EQ(dtype_name(DType::E5M2), "e5m2");
  EXPECT_TRUE(is_float8(DType::E4M3));
  EXPECT_FALSE(is_float8(DType::BF16));
}

TEST(DType, ParsesNamesAndAliases) {
  EXPECT_EQ(parse_dtype("bf16"), DType::BF16);
  EXPECT_EQ(parse_dtype("BF16"), DType::BF16);
  EXPECT_EQ(parse_dtype("bfloat16"), DType::BF16);
  EXPECT_EQ(parse_dtype("float32"), DType::FP32);
  EXPECT_EQ(parse_dtype("e4m3"), DType::E4M3);
  EXPECT_FALSE(parse_dtype("fp7").has_value());
  EXPECT_FALSE(parse_dtype("").has_value());
}

TEST(Tensor, ShapeBytesAndSlices) {
  std::vector<float> storage(2 * 3 * 4);
  Tensor t(storage.data(), DType::FP32, {2, 3, 4}, Location::Host);
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.bytes(), 96u);
  EXPECT_EQ(t.size(-1), 4);
  EXPECT_EQ(t.shape_string(), "[2, 3, 4]");
  Tensor row = t.slice_rows(1, 2);
  EXPECT_EQ(row.get<float>(), storage.data() + 12);
  EXPECT_EQ(row.numel(), 12);
  EXPECT_EQ(t.reshaped({6, 4}).size(0), 6);
  EXPECT_THROW(t.reshaped({5, 4}), Error);
  EXPECT_THROW(t.slice_rows(1, 3), Error);
  EXPECT_THROW(t.get<double>(), Error);
  EXPECT_THROW(t.size(3), Error);
}
