#include "core/dtype.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <string>

namespace llmq {

namespace {
struct DTypeInfo {
  DType type;
  std::size_t size;
  std::string_view name;
};
constexpr std::array<DTypeInfo, 10> kInfo{{
    {DType::FP32, 4, "fp32"}, {DType::BF16, 2, "bf16"},  {DType::FP16, 2, "fp16"},  {DType::E4M3, 1, "e4m3"},
    {DType::E5M2, 1, "e5m2"}, {DType::INT32, 4, "int32"}, {DType::INT64, 8, "int64"}, {DType::INT8, 1, "int8"},
    {DType::UINT8, 1, "uint8"}, {DType::BOOL, 1, "bool"},
}};
const DTypeInfo& info(DType t) { return kInfo[static_cast<std::size_t>(t)]; }

struct Alias {
  std::string_view alias;
  DType type;
};
constexpr std::array<Alias, 12> kAliases{{
    {"float32", DType::FP32}, {"float", DType::FP32},     {"f32", DType::FP32},
    {"bfloat16", DType::BF16}, {"float16", DType::FP16},  {"half", DType::FP16},
    {"fp8-e4m3", DType::E4M3}, {"float8_e4m3fn", DType::E4M3}, {"fp8", DType::E4M3},
    {"fp8-e5m2", DType::E5M2}, {"float8_e5m2", DType::E5M2}, {"int", DType::INT32},
}};
}  // namespace

std::size_t dtype_size(DType t) { return info(t).size; }
std::string_view dtype_name(DType t) { return info(t).name; }
bool is_float8(DType t) { return t == DType::E4M3 || t == DType::E5M2; }
bool is_floating(DType t) { return t <= DType::E5M2; }

std::optional<DType> parse_dtype(std::string_view name) {
  std::string lower(name);
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  for (const auto& i : kInfo)
    if (i.name == lower) return i.type;
  for (const auto& a : kAliases)
    if (a.alias == lower) return a.type;
  return std::nullopt;
}

}  // namespace llmq
