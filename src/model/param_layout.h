// Where every parameter of a Qwen2-style model lives. All parameters sit back to back in one flat
// buffer per role (forward weights, gradients, Adam m, Adam v), each starting on a 128-element
// boundary so kernels can use 16-byte vector access. The same layout (same offsets) is used for
// every role, so the optimizer, the gradient norm and checkpoints walk one list.
//
// Fused tensors (one matmul instead of several):
//   qkv_w  [(Hq + 2*Hkv)*Hs, C] = rows of HF q_proj, then k_proj, then v_proj (qkv_b likewise)
//   mlp_up_w [2*D, C]            = rows of HF gate_proj, then up_proj (see kernels/swiglu.h)
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"

namespace llmq {

struct ParamSpec {
  std::string name;                  // our name, e.g. "layers.3.qkv_w"
  std::vector<std::int64_t> shape;   // row-major
  std::int64_t offset = 0;           // in elements, into the flat buffer
  bool weight_decay = false;         // matrices get decay, norms and biases do not
  enum class Init { Normal, Ones, Zeros } init = Init::Normal;

  std::int64_t numel() const;
  std::int64_t rows() const { return shape.front(); }
  std::int64_t cols() const { return shape.size() > 1 ? shape[1] : 1; }
};

// One HF tensor stored as a block of rows inside one of our parameters.
struct HfSlice {
  std::string hf_name;
  int param = 0;               // index into ParamLayout::params()
  std::int64_t row_begin = 0;  // first row inside the parameter
  std::int64_t rows = 0;
};

struct LayerParamIds {
  int ln1_w, qkv_w, qkv_b, att_out_w, ln2_w, mlp_up_w, mlp_down_w;
  // The block matrices (what FP8 quantizes and --offload-master / --offload-gradients move).
  std::array<int, 4> matrices() const { return {qkv_w, att_out_w, mlp_up_w, mlp_down_w}; }
};

class ParamLayout {
 public:
  explicit ParamLayout(const ModelConfig& cfg);

  const std::vector<ParamSpec>& params() const { return params_; }
  const ParamSpec& operator[](int id) const { return params_.at(id); }
  std::int64_t total_elements() const { return total_; }

  int embedding() const { return embedding_; }
  int final_norm() const { return final_norm_; }
  int lm_head() const { return lm_head_; }  // == embedding() when tied
  const LayerParamIds& layer(int l) const { return layers_.at(l); }
  int layer_of(int param) const { return layer_of_.at(param); }  // -1 outside the blocks
  // Elements from the parameter's offset to the next one's (its size with alignment padding).
  std::int64_t padded_numel(int param) const;
  int num_layers() const { return static_cast<int>(layers_.size()); }

  // Every HF tensor of the model (tied models have no lm_head.weight).
  const std::vector<HfSlice>& hf_slices() const { return hf_; }

 private:
  int add(std::string name, std::vector<std::int64_t> shape, bool decay, ParamSpec::Init init);
  void map_hf(std::string hf_name, int param, std::int64_t row_begin, std::int64_t rows);

  std::vector<ParamSpec> params_;
  std::vector<HfSlice> hf_;
  std::vector<LayerParamIds> layers_;
  std::vector<int> layer_of_;
  int embedding_ = -1, final_norm_ = -1, lm_head_ = -1;
  std::int64_t total_ = 0;
};

}  // namespace llmq
