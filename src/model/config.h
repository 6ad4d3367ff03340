// Model architecture description: read from a Hugging Face config.json, written back as one that
// transformers 4 and 5 both load, built-in presets for the Qwen2.5 family, and derived counts
// (parameters, matmul parameters, training FLOPs per token).
//
// Size convention: C hidden size, D MLP width, L layers, Hq / Hkv query / key-value heads,
// Hs head size, V vocabulary, T sequence length.
//
// Architecture of one block (all three families): x += o(attn(rope(q(ln1(x))), rope(k(..)), v(..)));
// x += down(silu(gate(ln2(x))) * up(ln2(x))); RMSNorm everywhere, final RMSNorm, LM head.
//   Qwen2: q/k/v carry biases.  Llama: biases only if `attention_bias`.  Qwen3: no biases,
//   RMSNorm over each head of q and k (qk_norm), head size from `head_dim`.
//
// Training FLOPs per token at sequence length T (forward + backward = 3x forward):
//   6 * matmul_parameter_count()            every linear layer: 2 FLOPs per weight forward,
//                                           4 backward (input and weight gradients); the LM head
//                                           counts even when its weight is tied to the embedding.
// + 6 * L * Hq * Hs * T                     attention: per token, QK^T and PV each take 2*T*Hq*Hs
//                                           FLOPs forward for full attention, causal masking halves
//                                           that (2*T*Hq*Hs for both together), times 3 for fwd+bwd.
// Biases, norms, RoPE, activations and the embedding lookup are not counted (they are not matmuls).
#pragma once
#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"

namespace llmq {

enum class Architecture { Qwen2, Llama, Qwen3 };

std::string_view architecture_name(Architecture a);  // "qwen2", "llama", "qwen3" (HF model_type)

struct ModelConfig {
  std::string name;  // preset name or the config.json path it came from (for messages and logs)
  Architecture architecture = Architecture::Qwen2;
  int hidden_size = 0;        // C
  int intermediate_size = 0;  // D
  int num_layers = 0;         // L
  int num_query_heads = 0;    // Hq
  int num_kv_heads = 0;       // Hkv
  int head_size = 0;          // Hs
  int vocab_size = 0;         // V
  bool tie_word_embeddings = false;
  double rope_theta = 10000.0;
  double rms_norm_eps = 1e-6;
  int max_position_embeddings = 32768;
  bool qkv_bias = false;
  bool qk_norm = false;
  std::optional<int> bos_token_id;
  std::optional<int> eos_token_id;  // the first one when config.json lists several
  std::string torch_dtype;          // as written in the source config ("bfloat16", ...); may be empty

  int q_channels() const { return num_query_heads * head_size; }   // Hq * Hs
  int kv_channels() const { return num_kv_heads * head_size; }     // Hkv * Hs
  int qkv_channels() const { return q_channels() + 2 * kv_channels(); }

  // All trainable weights, as Hugging Face counts them (the tied LM head counted once).
  std::int64_t parameter_count() const;
  // Weights of every linear layer, the LM head included even when tied; no biases, no embedding lookup.
  std::int64_t matmul_parameter_count() const;
  // See the head comment: 6 * matmul_parameter_count() + 6 * L * Hq * Hs * T.
  std::int64_t training_flops_per_token(int seq_len) const;
};

// Parses a Hugging Face config.json. Throws llmq::Error naming the file and the problem.
ModelConfig load_config_json(const std::filesystem::path& path);
// Same, from parsed JSON; `source_name` names the origin in error messages and becomes ModelConfig::name.
ModelConfig config_from_json(const nlohmann::json& j, std::string_view source_name);
// Checks sizes and divisibility; load_config_json calls it, call it for hand-made configs.
void validate_config(const ModelConfig& cfg, std::string_view source_name);

// A config.json that transformers 4 and 5 both load. `weights_dtype` is BF16 or FP32 (the dtype
// of the saved model.safetensors); it is written as both `torch_dtype` and `dtype`.
nlohmann::json to_hf_config_json(const ModelConfig& cfg, DType weights_dtype = DType::BF16);

// Built-in Qwen2.5 presets (0.5B ... 32B, base and -Instruct). Accepts "Qwen/Qwen2.5-0.5B",
// "Qwen2.5-0.5B", "qwen2.5-0.5b-instruct", ... Returns nullopt for an unknown name.
std::optional<ModelConfig> find_preset(std::string_view name);
// The canonical preset names ("Qwen/Qwen2.5-0.5B", ...), base models first, for help and error texts.
std::vector<std::string> preset_names();

}  // namespace llmq
