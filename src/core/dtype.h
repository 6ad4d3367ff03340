// Element types used anywhere in llmq: model/activation types, FP8 matmul types, token ids.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace llmq {

enum class DType : std::uint8_t { FP32, BF16, FP16, E4M3, E5M2, INT32, INT64, INT8, UINT8, BOOL };

std::size_t dtype_size(DType t);
std::string_view dtype_name(DType t);                       // "fp32", "bf16", "e4m3", ...
std::optional<DType> parse_dtype(std::string_view name);   // accepts our names and common aliases
bool is_float8(DType t);
bool is_floating(DType t);

}  // namespace llmq
