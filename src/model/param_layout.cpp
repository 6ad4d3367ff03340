#include "model/param_layout.h"

#include <fmt/format.h>

#include "core/errors.h"

namespace llmq {

namespace {
constexpr std::int64_t kAlignElements = 128;
}

std::int64_t ParamSpec::numel() const {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

int ParamLayout::add(std::string name, std::vector<std::int64_t> shape, bool decay, ParamSpec::Init init) {
  ParamSpec spec{std::move(name), std::move(shape), total_, decay, init};
  total_ += (spec.numel() + kAlignElements - 1) / kAlignElements * kAlignElements;
  params_.push_back(std::move(spec));
  return static_cast<int>(params_.size()) - 1;
}

void ParamLayout::map_hf(std::string hf_name, int param, std::int64_t row_begin, std::int64_t rows) {
  hf_.push_back(HfSlice{std::move(hf_name), param, row_begin, rows});
}

ParamLayout::ParamLayout(const ModelConfig& cfg) {
  LLMQ_REQUIRE(cfg.architecture == Architecture::Qwen2 || cfg.architecture == Architecture::Llama,
               "model {}: architecture {} is not supported yet (Qwen2 and Llama are)", cfg.name,
               architecture_name(cfg.architecture));
  using Init = ParamSpec::Init;
  const std::int64_t C = cfg.hidden_size, D = cfg.intermediate_size, V = cfg.vocab_size;
  const std::int64_t q = cfg.q_channels(), kv = cfg.kv_channels(), qkv = cfg.qkv_channels();

  embedding_ = add("embedding", {V, C}, true, Init::Normal);
  map_hf("model.embed_tokens.weight", embedding_, 0, V);
  for (int l = 0; l < cfg.num_layers; ++l) {
    const std::string p = fmt::format("layers.{}.", l), hf = fmt::format("model.layers.{}.", l);
    LayerParamIds ids{};
    ids.ln1_w = add(p + "ln1_w", {C}, false, Init::Ones);
    ids.qkv_w = add(p + "qkv_w", {qkv, C}, true, Init::Normal);
    ids.qkv_b = cfg.qkv_bias ? add(p + "qkv_b", {qkv}, false, Init::Zeros) : -1;
    ids.att_out_w = add(p + "att_out_w", {C, q}, true, Init::Normal);
    ids.ln2_w = add(p + "ln2_w", {C}, false, Init::Ones);
    ids.mlp_up_w = add(p + "mlp_up_w", {2 * D, C}, true, Init::Normal);
    ids.mlp_down_w = add(p + "mlp_down_w", {C, D}, true, Init::Normal);
    layers_.push_back(ids);

    map_hf(hf + "input_layernorm.weight", ids.ln1_w, 0, C);
    map_hf(hf + "self_attn.q_proj.weight", ids.qkv_w, 0, q);
    map_hf(hf + "self_attn.k_proj.weight", ids.qkv_w, q, kv);
    map_hf(hf + "self_attn.v_proj.weight", ids.qkv_w, q + kv, kv);
    if (cfg.qkv_bias) {
      map_hf(hf + "self_attn.q_proj.bias", ids.qkv_b, 0, q);
      map_hf(hf + "self_attn.k_proj.bias", ids.qkv_b, q, kv);
      map_hf(hf + "self_attn.v_proj.bias", ids.qkv_b, q + kv, kv);
    }
    map_hf(hf + "self_attn.o_proj.weight", ids.att_out_w, 0, C);
    map_hf(hf + "post_attention_layernorm.weight", ids.ln2_w, 0, C);
    map_hf(hf + "mlp.gate_proj.weight", ids.mlp_up_w, 0, D);
    map_hf(hf + "mlp.up_proj.weight", ids.mlp_up_w, D, D);
    map_hf(hf + "mlp.down_proj.weight", ids.mlp_down_w, 0, C);
  }
  final_norm_ = add("final_norm_w", {C}, false, Init::Ones);
  map_hf("model.norm.weight", final_norm_, 0, C);
  if (cfg.tie_word_embeddings) {
    lm_head_ = embedding_;
  } else {
    lm_head_ = add("lm_head", {V, C}, true, Init::Normal);
    map_hf("lm_head.weight", lm_head_, 0, V);
  }
  layer_of_.assign(params_.size(), -1);
  for (int l = 0; l < cfg.num_layers; ++l) {
    const LayerParamIds& p = layers_[l];
    for (int id : {p.ln1_w, p.qkv_w, p.qkv_b, p.att_out_w, p.ln2_w, p.mlp_up_w, p.mlp_down_w})
      if (id >= 0) layer_of_[id] = l;
  }
}

std::int64_t ParamLayout::padded_numel(int param) const {
  const std::int64_t next = param + 1 < static_cast<int>(params_.size()) ? params_[param + 1].offset : total_;
  return next - params_.at(param).offset;
}

}  // namespace llmq
