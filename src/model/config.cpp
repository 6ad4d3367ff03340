// ModelConfig: config.json parsing and writing, Qwen2.5 presets, derived counts (see config.h).
#include "model/config.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cctype>
#include <fstream>

#include "core/errors.h"

namespace llmq {

namespace {

using nlohmann::json;

std::string to_lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
  return out;
}

bool has(const json& j, const char* key) { return j.contains(key) && !j.at(key).is_null(); }

long long read_integer(const json& j, const char* key, std::string_view src) {
  const json& v = j.at(key);
  LLMQ_REQUIRE(v.is_number_integer(), "{}: '{}' must be an integer, found {}", src, key, v.dump());
  return v.get<long long>();
}

int read_int(const json& j, const char* key, std::string_view src) {
  long long v = read_integer(j, key, src);
  LLMQ_REQUIRE(v > 0 && v <= 0x7fffffff, "{}: '{}' must be a positive integer, found {}", src, key, v);
  return static_cast<int>(v);
}

int required_int(const json& j, const char* key, std::string_view src) {
  LLMQ_REQUIRE(has(j, key), "{}: required key '{}' is missing (is this a Hugging Face config.json?)", src, key);
  return read_int(j, key, src);
}

int optional_int(const json& j, const char* key, int fallback, std::string_view src) {
  return has(j, key) ? read_int(j, key, src) : fallback;
}

double optional_double(const json& j, const char* key, double fallback, std::string_view src) {
  if (!has(j, key)) return fallback;
  const json& v = j.at(key);
  LLMQ_REQUIRE(v.is_number(), "{}: '{}' must be a number, found {}", src, key, v.dump());
  return v.get<double>();
}

bool optional_bool(const json& j, const char* key, bool fallback, std::string_view src) {
  if (!has(j, key)) return fallback;
  const json& v = j.at(key);
  LLMQ_REQUIRE(v.is_boolean(), "{}: '{}' must be true or false, found {}", src, key, v.dump());
  return v.get<bool>();
}

std::string optional_string(const json& j, const char* key, std::string_view src) {
  if (!has(j, key)) return {};
  const json& v = j.at(key);
  LLMQ_REQUIRE(v.is_string(), "{}: '{}' must be a string, found {}", src, key, v.dump());
  return v.get<std::string>();
}

// A token id that may be written as a number or a list of numbers (Llama 3 lists several eos ids).
std::optional<int> optional_token_id(const json& j, const char* key, std::string_view src) {
  if (!has(j, key)) return std::nullopt;
  const json& v = j.at(key);
  if (v.is_array()) {
    if (v.empty()) return std::nullopt;
    LLMQ_REQUIRE(v.front().is_number_integer(), "{}: '{}' must hold integer token ids, found {}", src, key, v.dump());
    return v.front().get<int>();
  }
  LLMQ_REQUIRE(v.is_number_integer() && v.get<long long>() >= 0, "{}: '{}' must be a token id, found {}", src, key,
               v.dump());
  return v.get<int>();
}

std::optional<Architecture> architecture_from_model_type(std::string_view type) {
  if (type == "qwen2") return Architecture::Qwen2;
  if (type == "llama") return Architecture::Llama;
  if (type == "qwen3") return Architecture::Qwen3;
  return std::nullopt;
}

std::optional<Architecture> architecture_from_class(std::string_view cls) {
  if (cls == "Qwen2ForCausalLM") return Architecture::Qwen2;
  if (cls == "LlamaForCausalLM") return Architecture::Llama;
  if (cls == "Qwen3ForCausalLM") return Architecture::Qwen3;
  return std::nullopt;
}

Architecture read_architecture(const json& j, std::string_view src) {
  std::string model_type = optional_string(j, "model_type", src);
  if (!model_type.empty()) {
    auto arch = architecture_from_model_type(model_type);
    LLMQ_REQUIRE(arch, "{}: model_type '{}' is not supported (llmq trains qwen2, qwen3 and llama models)", src,
                 model_type);
    return *arch;
  }
  if (has(j, "architectures") && j.at("architectures").is_array()) {
    for (const json& cls : j.at("architectures"))
      if (cls.is_string())
        if (auto arch = architecture_from_class(cls.get<std::string>())) return *arch;
    LLMQ_REQUIRE(false, "{}: architectures {} are not supported (llmq trains Qwen2ForCausalLM, Qwen3ForCausalLM "
                 "and LlamaForCausalLM)", src, j.at("architectures").dump());
  }
  LLMQ_REQUIRE(false, "{}: required key 'model_type' is missing and there is no 'architectures' list to fall back on",
               src);
  return Architecture::Qwen2;  // unreachable
}

// RoPE settings live either at the top level (transformers 4: rope_theta, rope_scaling) or in
// rope_parameters (transformers 5). Only plain RoPE is implemented, so any scaling type is rejected.
double read_rope_theta(const json& j, std::string_view src) {
  double theta = optional_double(j, "rope_theta", 10000.0, src);
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    if (!has(j, key)) continue;
    const json& rope = j.at(key);
    LLMQ_REQUIRE(rope.is_object(), "{}: '{}' must be an object, found {}", src, key, rope.dump());
    std::string type = optional_string(rope, "rope_type", src);
    if (type.empty()) type = optional_string(rope, "type", src);
    LLMQ_REQUIRE(type.empty() || type == "default" || type == "none",
                 "{}: rope_scaling type '{}' is not supported (llmq implements plain RoPE only); remove '{}' or "
                 "use a model without RoPE scaling", src, type, key);
    theta = optional_double(rope, "rope_theta", theta, src);
  }
  return theta;
}

void reject_unsupported_features(const json& j, std::string_view src) {
  LLMQ_REQUIRE(!optional_bool(j, "use_sliding_window", false, src),
               "{}: use_sliding_window is true, but sliding-window attention is not supported (llmq uses full "
               "causal attention)", src);
  LLMQ_REQUIRE(!optional_bool(j, "mlp_bias", false, src), "{}: mlp_bias is true, but MLP biases are not supported",
               src);
  std::string act = optional_string(j, "hidden_act", src);
  LLMQ_REQUIRE(act.empty() || act == "silu", "{}: hidden_act '{}' is not supported (only silu / SwiGLU)", src, act);
}

std::int64_t i64(int v) { return static_cast<std::int64_t>(v); }

}  // namespace

std::string_view architecture_name(Architecture a) {
  switch (a) {
    case Architecture::Qwen2: return "qwen2";
    case Architecture::Llama: return "llama";
    case Architecture::Qwen3: return "qwen3";
  }
  return "unknown";
}

std::int64_t ModelConfig::parameter_count() const {
  const std::int64_t C = hidden_size, D = intermediate_size, V = vocab_size;
  std::int64_t attention = C * qkv_channels() + i64(q_channels()) * C;
  if (qkv_bias) attention += qkv_channels();
  if (qk_norm) attention += 2 * i64(head_size);
  const std::int64_t mlp = 3 * C * D;
  const std::int64_t norms = 2 * C;
  std::int64_t total = V * C + i64(num_layers) * (attention + mlp + norms) + C;
  if (!tie_word_embeddings) total += V * C;
  return total;
}

std::int64_t ModelConfig::matmul_parameter_count() const {
  const std::int64_t C = hidden_size, D = intermediate_size, V = vocab_size;
  const std::int64_t per_layer = C * qkv_channels() + i64(q_channels()) * C + 3 * C * D;
  return i64(num_layers) * per_layer + V * C;
}

std::int64_t ModelConfig::training_flops_per_token(int seq_len) const {
  LLMQ_REQUIRE(seq_len > 0, "training_flops_per_token: sequence length must be positive, got {}", seq_len);
  const std::int64_t attention = 6 * i64(num_layers) * num_query_heads * head_size * i64(seq_len);
  return 6 * matmul_parameter_count() + attention;
}

void validate_config(const ModelConfig& c, std::string_view src) {
  const std::pair<const char*, int> sizes[] = {
      {"hidden_size", c.hidden_size},         {"intermediate_size", c.intermediate_size},
      {"num_hidden_layers", c.num_layers},    {"num_attention_heads", c.num_query_heads},
      {"num_key_value_heads", c.num_kv_heads}, {"head_dim", c.head_size},
      {"vocab_size", c.vocab_size},           {"max_position_embeddings", c.max_position_embeddings}};
  for (const auto& [key, value] : sizes)
    LLMQ_REQUIRE(value > 0, "{}: '{}' must be positive, found {}", src, key, value);
  LLMQ_REQUIRE(c.num_query_heads % c.num_kv_heads == 0,
               "{}: num_attention_heads ({}) must be a multiple of num_key_value_heads ({})", src, c.num_query_heads,
               c.num_kv_heads);
  LLMQ_REQUIRE(c.rms_norm_eps > 0, "{}: rms_norm_eps must be positive, found {}", src, c.rms_norm_eps);
  LLMQ_REQUIRE(c.rope_theta > 0, "{}: rope_theta must be positive, found {}", src, c.rope_theta);
}

ModelConfig config_from_json(const json& j, std::string_view src) {
  LLMQ_REQUIRE(j.is_object(), "{}: expected a JSON object at the top level, found {}", src, j.type_name());
  reject_unsupported_features(j, src);
  ModelConfig c;
  c.name = std::string(src);
  c.architecture = read_architecture(j, src);
  c.hidden_size = required_int(j, "hidden_size", src);
  c.intermediate_size = required_int(j, "intermediate_size", src);
  c.num_layers = required_int(j, "num_hidden_layers", src);
  c.num_query_heads = required_int(j, "num_attention_heads", src);
  c.num_kv_heads = optional_int(j, "num_key_value_heads", c.num_query_heads, src);
  c.vocab_size = required_int(j, "vocab_size", src);
  if (has(j, "head_dim")) {
    c.head_size = read_int(j, "head_dim", src);
  } else {
    LLMQ_REQUIRE(c.hidden_size % c.num_query_heads == 0,
                 "{}: hidden_size ({}) must be divisible by num_attention_heads ({}) when there is no head_dim", src,
                 c.hidden_size, c.num_query_heads);
    c.head_size = c.hidden_size / c.num_query_heads;
  }
  c.tie_word_embeddings = optional_bool(j, "tie_word_embeddings", false, src);
  c.rope_theta = read_rope_theta(j, src);
  c.rms_norm_eps = optional_double(j, "rms_norm_eps", 1e-6, src);
  c.max_position_embeddings = optional_int(j, "max_position_embeddings", 32768, src);
  c.qkv_bias = c.architecture == Architecture::Qwen2 || optional_bool(j, "attention_bias", false, src);
  c.qk_norm = c.architecture == Architecture::Qwen3;
  c.bos_token_id = optional_token_id(j, "bos_token_id", src);
  c.eos_token_id = optional_token_id(j, "eos_token_id", src);
  c.torch_dtype = optional_string(j, "torch_dtype", src);
  if (c.torch_dtype.empty()) c.torch_dtype = optional_string(j, "dtype", src);
  validate_config(c, src);
  return c;
}

ModelConfig load_config_json(const std::filesystem::path& given) {
  std::filesystem::path path = given;
  if (std::filesystem::is_directory(path)) path /= "config.json";
  LLMQ_REQUIRE(std::filesystem::exists(path),
               "model config {} not found: pass a model directory that holds config.json, a Hugging Face name "
               "(Org/Name) that is downloaded, or --from-scratch with a preset", path.string());
  std::ifstream in(path);
  LLMQ_REQUIRE(in.good(), "model config {}: cannot open it for reading (check permissions)", path.string());
  json j;
  try {
    j = json::parse(in);
  } catch (const json::parse_error& e) {
    throw Error(fmt::format("model config {}: invalid JSON ({})", path.string(), e.what()));
  }
  return config_from_json(j, path.string());
}

json to_hf_config_json(const ModelConfig& c, DType weights_dtype) {
  LLMQ_REQUIRE(weights_dtype == DType::BF16 || weights_dtype == DType::FP32,
               "to_hf_config_json: weights dtype must be bf16 or fp32, got {}", dtype_name(weights_dtype));
  const char* dtype = weights_dtype == DType::BF16 ? "bfloat16" : "float32";
  const char* cls = c.architecture == Architecture::Qwen2   ? "Qwen2ForCausalLM"
                    : c.architecture == Architecture::Llama ? "LlamaForCausalLM"
                                                            : "Qwen3ForCausalLM";
  json j;
  j["architectures"] = json::array({cls});
  j["model_type"] = std::string(architecture_name(c.architecture));
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_layers;
  j["num_attention_heads"] = c.num_query_heads;
  j["num_key_value_heads"] = c.num_kv_heads;
  j["vocab_size"] = c.vocab_size;
  if (c.architecture == Architecture::Qwen3 || c.head_size * c.num_query_heads != c.hidden_size)
    j["head_dim"] = c.head_size;
  if (c.architecture != Architecture::Qwen2) j["attention_bias"] = c.qkv_bias;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rope_theta"] = c.rope_theta;  // transformers 4
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", c.rope_theta}};  // transformers 5
  j["torch_dtype"] = dtype;
  j["dtype"] = dtype;
  if (c.architecture != Architecture::Llama) j["use_sliding_window"] = false;
  j["hidden_act"] = "silu";
  if (c.bos_token_id) j["bos_token_id"] = *c.bos_token_id;
  if (c.eos_token_id) j["eos_token_id"] = *c.eos_token_id;
  j["attention_dropout"] = 0.0;
  j["initializer_range"] = 0.02;
  j["use_cache"] = true;
  return j;
}

// ---- Presets: numbers from the Qwen2.5 base models' config.json files. ----

namespace {

struct Preset {
  std::string_view name;  // without the "Qwen/" organisation
  int C, D, L, Hq, Hkv, V;
  bool tied;
  double eps;
  int max_positions;
};

constexpr std::array<Preset, 6> kPresets{{
    {"Qwen2.5-0.5B", 896, 4864, 24, 14, 2, 151936, true, 1e-6, 32768},
    {"Qwen2.5-1.5B", 1536, 8960, 28, 12, 2, 151936, true, 1e-6, 131072},
    {"Qwen2.5-3B", 2048, 11008, 36, 16, 2, 151936, true, 1e-6, 32768},
    {"Qwen2.5-7B", 3584, 18944, 28, 28, 4, 152064, false, 1e-6, 131072},
    {"Qwen2.5-14B", 5120, 13824, 48, 40, 8, 152064, false, 1e-5, 131072},
    {"Qwen2.5-32B", 5120, 27648, 64, 40, 8, 152064, false, 1e-5, 131072},
}};

constexpr int kQwenEndOfText = 151643;  // <|endoftext|>: bos and eos of the base models
constexpr int kQwenImEnd = 151645;      // <|im_end|>: eos of the -Instruct models

ModelConfig make_preset(const Preset& p, bool instruct) {
  ModelConfig c;
  c.name = "Qwen/" + std::string(p.name) + (instruct ? "-Instruct" : "");
  c.architecture = Architecture::Qwen2;
  c.hidden_size = p.C;
  c.intermediate_size = p.D;
  c.num_layers = p.L;
  c.num_query_heads = p.Hq;
  c.num_kv_heads = p.Hkv;
  c.head_size = p.C / p.Hq;
  c.vocab_size = p.V;
  c.tie_word_embeddings = p.tied;
  c.rope_theta = 1000000.0;
  // The -Instruct configs share the architecture; they differ in eos id, context length and eps.
  c.rms_norm_eps = instruct ? 1e-6 : p.eps;
  c.max_position_embeddings = instruct ? 32768 : p.max_positions;
  c.qkv_bias = true;
  c.qk_norm = false;
  c.bos_token_id = kQwenEndOfText;
  c.eos_token_id = instruct ? kQwenImEnd : kQwenEndOfText;
  c.torch_dtype = "bfloat16";
  return c;
}

}  // namespace

std::optional<ModelConfig> find_preset(std::string_view name) {
  std::string key = to_lower(name);
  if (key.starts_with("qwen/")) key.erase(0, 5);
  bool instruct = false;
  if (key.ends_with("-instruct")) {
    instruct = true;
    key.resize(key.size() - 9);
  }
  for (const Preset& p : kPresets)
    if (to_lower(p.name) == key) return make_preset(p, instruct);
  return std::nullopt;
}

std::vector<std::string> preset_names() {
  std::vector<std::string> names;
  for (bool instruct : {false, true})
    for (const Preset& p : kPresets) names.push_back("Qwen/" + std::string(p.name) + (instruct ? "-Instruct" : ""));
  return names;
}

}  // namespace llmq
