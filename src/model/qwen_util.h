// Small host-side helpers of the Qwen model: dtype of an element type, host conversions,
// device->host downloads, per-tensor seeds.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>
#include <vector>

#include "core/safetensors.h"
#include "core/tensor.h"

namespace llmq {

template <typename T>
constexpr DType element_dtype() {
  return std::is_same_v<T, float> ? DType::FP32 : DType::BF16;
}

template <typename T>
T from_float_host(float x) {
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else {
    __nv_bfloat16_raw raw;
    raw.x = float_to_bf16_bits(x);
    return T(raw);
  }
}

template <typename T>
std::vector<float> to_float_host(const std::vector<T>& v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else {
    std::vector<float> out(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) {
      out[i] = bf16_bits_to_float(static_cast<__nv_bfloat16_raw>(v[i]).x);
    }
    return out;
  }
}

inline std::vector<std::byte> download_bytes(const Tensor& t, cudaStream_t stream) {
  std::vector<std::byte> host(t.bytes());
  LLMQ_CUDA_CHECK(cudaStreamSynchronize(stream));
  LLMQ_CUDA_CHECK(cudaMemcpy(host.data(), t.data, t.bytes(), cudaMemcpyDeviceToHost));
  return host;
}

template <typename T>
std::vector<T> download(const Tensor& t, cudaStream_t stream) {
  std::vector<T> host(static_cast<std::size_t>(t.numel()));
  LLMQ_CUDA_CHECK(cudaStreamSynchronize(stream));
  LLMQ_CUDA_CHECK(cudaMemcpy(host.data(), t.data, t.bytes(), cudaMemcpyDeviceToHost));
  return host;
}

// Distinct, reproducible seed per parameter tensor (SplitMix64 finaliser).
inline std::uint32_t param_seed(std::uint64_t seed, std::uint64_t index) {
  std::uint64_t z = seed + 0x9E3779B97F4A7C15ull * (index + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return static_cast<std::uint32_t>(z ^ (z >> 31));
}

}  // namespace llmq
