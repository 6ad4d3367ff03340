// FP8 linear layers: see fp8_linear.h.
#include "model/fp8_linear.h"

#include <fmt/format.h>

#include <algorithm>
#include <utility>

#include "kernels/matmul.h"
#include "kernels/quantize.h"
#include "kernels/transpose.h"
#include "model/layer_streamer.h"

namespace llmq {

namespace k = kernels;

namespace {
constexpr int kSlots = static_cast<int>(Fp8Slot::kCount);
// cuBLASLt's FP8 GEMMs refuse scale pointers that are not 16-byte aligned: one scale per 4 floats.
constexpr int kScaleStride = 4;

void require_fp8_shape(const ModelConfig& cfg, const char* what, std::int64_t n) {
  LLMQ_REQUIRE(n % 16 == 0, "--matmul-dtype=e4m3: {} of model {} is {}, not a multiple of 16 (FP8 GEMMs need it); "
               "use --matmul-dtype=bf16", what, cfg.name, n);
}
}  // namespace

Fp8Linear::Fp8Linear(Allocator& alloc, const ModelConfig& cfg, const ParamLayout& layout, int rows, bool fp8_dgrad,
                     bool transpose_per_use, KeptFp8Inputs kept_inputs, bool offload_weights)
    : fp8_dgrad_(fp8_dgrad),
      kept_inputs_(fp8_dgrad && rows % 16 == 0 ? kept_inputs : KeptFp8Inputs{}),
      layers_(cfg.num_layers),
      rows_(rows) {
  LLMQ_REQUIRE(rows > 0, "internal error: FP8 linear layers for {} rows", rows);
  require_fp8_shape(cfg, "hidden_size", cfg.hidden_size);
  require_fp8_shape(cfg, "intermediate_size", cfg.intermediate_size);
  require_fp8_shape(cfg, "the query width (heads x head size)", cfg.q_channels());
  require_fp8_shape(cfg, "the qkv width", cfg.qkv_channels());

  transpose_per_use = transpose_per_use || offload_weights;
  param_to_quant_.assign(layout.params().size(), -1);
  std::int64_t max_in = 0, max_out = 0, max_weight = 0;
  for (int l = 0; l < layout.num_layers(); ++l) {
    const LayerParamIds& ids = layout.layer(l);
    const auto input_kept = [&](int param) {
      const KeptFp8Inputs& k = kept_inputs_;
      return (param == ids.qkv_w && k.ln1) || (param == ids.att_out_w && k.att) || (param == ids.mlp_up_w && k.ln2) ||
             (param == ids.mlp_down_w && k.swiglu);
    };
    for (int param : ids.matrices()) {
      const ParamSpec& spec = layout[param];
      QuantWeight q;
      q.param = param;
      q.layer = l;
      q.rows = spec.rows();
      q.cols = spec.cols();
      q.scale_slot = static_cast<int>(quants_.size());
      if (!offload_weights) q.q = alloc.allocate_bytes(spec.name + " e4m3", spec.numel(), MemCategory::Quants);
      if (fp8_dgrad && !transpose_per_use)
        q.q_t = alloc.allocate_bytes(spec.name + "^T e4m3", spec.numel(), MemCategory::Quants);
      if (input_kept(param))
        q.x_t = alloc.allocate_bytes(spec.name + " x^T e4m3", static_cast<std::size_t>(rows) * q.cols,
                                     MemCategory::Quants);
      max_weight = std::max(max_weight, spec.numel());
      param_to_quant_[param] = q.scale_slot;
      quants_.push_back(q);
      max_in = std::max(max_in, q.cols);
      max_out = std::max(max_out, q.rows);
    }
  }
  if (offload_weights) make_offloaded_weights(alloc);
  const auto n_quants = static_cast<std::int64_t>(quants_.size());
  weight_absmax_ = alloc.allocate("fp8 weight abs-max", DType::FP32, {n_quants}, MemCategory::Quants).get<float>();
  weight_scale_inv_ = alloc.allocate("fp8 weight scales", DType::FP32, {n_quants * kScaleStride}, MemCategory::Quants)
                          .get<float>();
  act_absmax_ = alloc.allocate("fp8 activation abs-max", DType::FP32, {std::int64_t{layers_} * kSlots},
                               MemCategory::Quants).get<float>();
  act_scale_inv_ = alloc.allocate("fp8 activation scales", DType::FP32, {2 * kScaleStride}, MemCategory::Quants)
                       .get<float>();
  if (kept_inputs_.any())
    input_scale_inv_ = alloc.allocate("fp8 kept x^T scales", DType::FP32, {n_quants * kScaleStride},
                                      MemCategory::Quants).get<float>();
  x_q_ = alloc.allocate_bytes("fp8 GEMM input (e4m3)", static_cast<std::size_t>(rows) * max_in, MemCategory::Quants);
  if (fp8_dgrad) {
    dy_q_ = alloc.allocate_bytes("fp8 GEMM gradient (e5m2)", static_cast<std::size_t>(rows) * max_out,
                                 MemCategory::Quants);
    dy_q_t_ = alloc.allocate_bytes("fp8 GEMM gradient^T (e5m2)", static_cast<std::size_t>(rows) * max_out,
                                   MemCategory::Quants);
    if (transpose_per_use)
      w_t_ = alloc.allocate_bytes("fp8 weight^T (per use)", static_cast<std::size_t>(max_weight), MemCategory::Quants);
  }
}

Fp8Linear::~Fp8Linear() = default;

void Fp8Linear::make_offloaded_weights(Allocator& alloc) {
  constexpr std::size_t kAlign = 16;  // cuBLASLt FP8 operands
  std::vector<std::size_t> layer_bytes(layers_, 0);
  for (QuantWeight& q : quants_) {
    q.offset_in_layer = layer_bytes[q.layer];
    layer_bytes[q.layer] += (static_cast<std::size_t>(q.rows * q.cols) + kAlign - 1) / kAlign * kAlign;
  }
  std::size_t total = 0;
  for (std::size_t b : layer_bytes) total += b;
  auto* host = static_cast<std::byte*>(
      alloc.allocate_bytes("fp8 weights e4m3 (offloaded)", total, MemCategory::Quants, MemKind::Pinned));
  std::vector<LayerStreamer::HostLayer> layers;
  for (std::size_t b : layer_bytes) {
    layers.push_back({host, b});
    host += b;
  }
  streamer_ = std::make_unique<LayerStreamer>(alloc, std::move(layers), "fp8 weights e4m3", MemCategory::Quants);
}

void* Fp8Linear::weight_q(const QuantWeight& w) const {
  if (w.q) return w.q;
  return streamer_->slot_data(w.layer) + w.offset_in_layer;
}

void Fp8Linear::acquire_layer(int l, int next, cudaStream_t stream) {
  if (!streamer_) return;
  streamer_->fetch(l, stream);
  streamer_->prefetch(next);
}

void Fp8Linear::release_layer(int l, cudaStream_t stream) {
  if (streamer_) streamer_->release(l, stream);
}

void Fp8Linear::begin_update(int l, cudaStream_t stream) {
  if (streamer_) streamer_->acquire_for_update(l, /*from_host=*/false, stream);
}

void Fp8Linear::end_update(int l, cudaStream_t stream) {
  if (streamer_) streamer_->write_back(l, stream);
}

void Fp8Linear::discard_layer_slots(cudaStream_t stream) {
  if (streamer_) streamer_->invalidate(stream);
}

float* Fp8Linear::absmax(int layer, Fp8Slot slot) const {
  return act_absmax_ + static_cast<std::int64_t>(layer) * kSlots + static_cast<int>(slot);
}

void Fp8Linear::begin_micro_step(cudaStream_t stream) {
  LLMQ_CUDA_CHECK(cudaMemsetAsync(act_absmax_, 0, sizeof(float) * layers_ * kSlots, stream));
  ++micro_step_;
}

const Fp8Linear::QuantWeight& Fp8Linear::quant(int param) const {
  const int index = param >= 0 && param < static_cast<int>(param_to_quant_.size()) ? param_to_quant_[param] : -1;
  LLMQ_REQUIRE(index >= 0, "internal error: parameter {} has no FP8 copy", param);
  return quants_[index];
}

Fp8Linear::QuantWeight& Fp8Linear::quant(int param) {
  return const_cast<QuantWeight&>(std::as_const(*this).quant(param));
}

void Fp8Linear::quantize_weight(int param, const nv_bfloat16* w, cudaStream_t stream) {
  const QuantWeight& q = quant(param);
  float* absmax = weight_absmax_ + q.scale_slot;
  k::abs_max(absmax, w, static_cast<std::size_t>(q.rows * q.cols), stream);
  k::quantize_transpose_fp8(weight_q(q), q.q_t, DType::E4M3, weight_scale_inv_ + q.scale_slot * kScaleStride, w, absmax,
                            static_cast<int>(q.rows), static_cast<int>(q.cols), stream);
}

void Fp8Linear::forward(k::MatmulContext& mm, nv_bfloat16* y, const nv_bfloat16* x, const float* x_absmax, int param,
                        const nv_bfloat16* bias, int rows, int in_f, int out_f, cudaStream_t stream) {
  QuantWeight& w = quant(param);
  LLMQ_REQUIRE(weights_current_, "internal error: FP8 weights used before prepare_weights()");
  LLMQ_REQUIRE(in_f == w.cols && out_f == w.rows && rows <= rows_,
               "internal error: FP8 GEMM [{} x {}] x [{} x {}]^T does not fit its weight [{}, {}] and {} rows", rows,
               in_f, out_f, in_f, w.rows, w.cols, rows_);
  float* x_scale_inv = act_scale_inv_ + 0;
  if (w.x_t) {
    // One pass writes x for this GEMM and x^T (with its own scale) for backward()'s weight gradient.
    LLMQ_REQUIRE(rows == rows_, "internal error: kept FP8 x^T needs {} rows, the GEMM has {}", rows_, rows);
    x_scale_inv = input_scale_inv_ + w.scale_slot * kScaleStride;
    k::quantize_transpose_fp8(x_q_, w.x_t, DType::E4M3, x_scale_inv, x, x_absmax, rows, in_f, stream);
    w.x_t_micro_step = micro_step_;
  } else {
    k::quantize_fp8(x_q_, DType::E4M3, x_scale_inv, x, x_absmax, static_cast<std::size_t>(rows) * in_f, stream);
  }
  k::matmul_fp8(mm, y, DType::BF16, x_q_, DType::E4M3, x_scale_inv, weight_q(w), DType::E4M3,
                weight_scale_inv_ + w.scale_slot * kScaleStride, rows, out_f, in_f, /*accumulate=*/false, bias,
                /*fast_accum=*/false, stream);
}

Fp8Linear::GradientBuffers Fp8Linear::gradient_buffers() const {
  LLMQ_REQUIRE(fp8_dgrad_, "internal error: FP8 gradient buffers without e5m2 gradients");
  return {dy_q_, dy_q_t_, act_scale_inv_ + kScaleStride};
}

void Fp8Linear::backward(k::MatmulContext& mm, nv_bfloat16* dx, nv_bfloat16* dw, const nv_bfloat16* dy,
                         const float* dy_absmax, const nv_bfloat16* x, const float* x_absmax, int param, int rows,
                         int in_f, int out_f, cudaStream_t stream) {
  // gradient_buffers() checks for e5m2 gradients; the shape is checked before the quantization writes.
  LLMQ_REQUIRE(rows <= rows_ && out_f == quant(param).rows,
               "internal error: FP8 gradient [{} x {}] does not fit parameter {} and {} rows", rows, out_f, param, rows_);
  const GradientBuffers g = gradient_buffers();
  k::quantize_transpose_fp8(g.q, g.q_t, DType::E5M2, g.scale_inv, dy, dy_absmax, rows, out_f, stream);
  backward_quantized(mm, dx, dw, x, x_absmax, param, rows, in_f, out_f, stream);
}

void Fp8Linear::backward_quantized(k::MatmulContext& mm, nv_bfloat16* dx, nv_bfloat16* dw, const nv_bfloat16* x,
                                   const float* x_absmax, int param, int rows, int in_f, int out_f,
                                   cudaStream_t stream) {
  const QuantWeight& w = quant(param);
  LLMQ_REQUIRE(fp8_dgrad_ && weights_current_, "internal error: FP8 backward without e5m2 gradients");
  LLMQ_REQUIRE(rows % 16 == 0, "internal error: FP8 weight gradients need B*T = {} to be a multiple of 16", rows);
  LLMQ_REQUIRE(in_f == w.cols && out_f == w.rows && rows <= rows_,
               "internal error: FP8 backward [{} x {}] x [{} x {}] does not fit its weight [{}, {}] and {} rows", rows,
               out_f, out_f, in_f, w.rows, w.cols, rows_);
  if (w.x_t)
    LLMQ_REQUIRE(rows == rows_ && w.x_t_micro_step == micro_step_ && micro_step_ > 0,
                 "internal error: FP8 backward of parameter {} without this micro-step's forward (kept x^T from "
                 "micro-step {}, now {}; {} of {} rows)", param, w.x_t_micro_step, micro_step_, rows, rows_);
  const float* w_scale_inv = weight_scale_inv_ + w.scale_slot * kScaleStride;
  const float* dy_scale_inv = act_scale_inv_ + kScaleStride;
  // dx[rows, in_f] = dy[rows, out_f] @ (W^T[in_f, out_f])^T: both operands K-major (K = out_f).
  const void* w_t = w.q_t;
  if (!w_t) {
    k::transpose_bytes(w_t_, weight_q(w), w.rows, w.cols, stream);
    w_t = w_t_;
  }
  k::matmul_fp8(mm, dx, DType::BF16, dy_q_, DType::E5M2, dy_scale_inv, w_t, DType::E4M3, w_scale_inv, rows, in_f,
                out_f, /*accumulate=*/false, nullptr, /*fast_accum=*/false, stream);
  // dW[out_f, in_f] += dy^T[out_f, rows] @ (x^T[in_f, rows])^T: K = rows (the tokens).
  const void* x_t = x_q_;
  const float* x_scale_inv = act_scale_inv_;
  if (w.x_t) {
    x_t = w.x_t;
    x_scale_inv = input_scale_inv_ + w.scale_slot * kScaleStride;
  } else {
    k::quantize_transpose_fp8(nullptr, x_q_, DType::E4M3, act_scale_inv_, x, x_absmax, rows, in_f, stream);
  }
  k::matmul_fp8(mm, dw, DType::BF16, dy_q_t_, DType::E5M2, dy_scale_inv, x_t, DType::E4M3, x_scale_inv, out_f, in_f,
                rows, /*accumulate=*/true, nullptr, /*fast_accum=*/false, stream);
}

}  // namespace llmq
