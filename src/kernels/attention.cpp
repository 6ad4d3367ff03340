// bf16 causal GQA attention through the cuDNN frontend's SDPA graphs (math and layouts: attention.h),
// plus the Tensor-level wrappers that dispatch bf16 here and fp32 to attention_fp32.cu.
//
// cuDNN describes every operand as [B, H, T, Hs] with explicit strides, so q, k, v (and dq, dk, dv)
// are strided views into the packed [B, T, Hq+2*Hkv, Hs] tensors: strides
// (T*(Hq+2*Hkv)*Hs, Hs, (Hq+2*Hkv)*Hs, 1), with k starting Hq*Hs elements and v (Hq+Hkv)*Hs elements
// after q. att / d_att [B, T, Hq, Hs] have strides (T*Hq*Hs, Hs, Hq*Hs, 1); lse [B, Hq, T] is cuDNN's
// "Stats" tensor [B, Hq, T, 1] (fp32, natural-log log-sum-exp of the scaled scores).
// With Hkv < Hq, cuDNN's backward sums dk / dv over the query heads of each group itself.
//
// This is the only translation unit that includes the cuDNN frontend (it is slow to compile).
#include "kernels/attention.h"

#include <cudnn.h>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"  // unused static helpers in the frontend's headers
#include <cudnn_frontend.h>
#pragma GCC diagnostic pop

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/errors.h"

namespace llmq::kernels {

namespace fe = cudnn_frontend;

namespace {

// Tensor ids of the variant packs (shared by the forward and the backward graph).
enum TensorUid : std::int64_t { kQ = 1, kK, kV, kO, kStats, kDO, kDQ, kDK, kDV };

struct AttentionShape {
  int B, T, Hq, Hkv, Hs;
  bool backward;
  bool operator==(const AttentionShape&) const = default;

  std::string describe() const {
    return fmt::format("B={} T={} Hq={} Hkv={} Hs={}", B, T, Hq, Hkv, Hs);
  }
  std::int64_t heads_total() const { return Hq + 2 * Hkv; }
  std::vector<std::int64_t> qkv_strides() const {
    return {static_cast<std::int64_t>(T) * heads_total() * Hs, Hs, heads_total() * Hs, 1};
  }
  std::vector<std::int64_t> att_strides() const {
    return {static_cast<std::int64_t>(T) * Hq * Hs, Hs, static_cast<std::int64_t>(Hq) * Hs, 1};
  }
  std::vector<std::int64_t> dims(int heads) const { return {B, heads, T, Hs}; }
  std::vector<std::int64_t> stats_dims() const { return {B, Hq, T, 1}; }
  std::vector<std::int64_t> stats_strides() const { return {static_cast<std::int64_t>(Hq) * T, T, 1, 1}; }
  float scale() const { return 1.f / std::sqrt(static_cast<float>(Hs)); }
};

struct AttentionShapeHash {
  std::size_t operator()(const AttentionShape& s) const {
    std::size_t h = 1469598103934665603ull;
    for (std::int64_t v : {s.B, s.T, s.Hq, s.Hkv, s.Hs, static_cast<int>(s.backward)}) h = (h ^ v) * 1099511628211ull;
    return h;
  }
};

void check_frontend(fe::error_t status, const char* step, const AttentionShape& shape) {
  if (status.is_good()) return;
  throw Error(fmt::format(
      "cuDNN attention {} ({}): {} failed: {} (cuDNN runtime {}, built against {}; bf16 SDPA needs cuDNN >= 9 on an "
      "Ampere or newer GPU, head size a multiple of 8 up to 256)",
      shape.backward ? "backward" : "forward", shape.describe(), step, status.get_message(), cudnnGetVersion(),
      CUDNN_VERSION));
}

using TensorAttributes = std::shared_ptr<fe::graph::Tensor_attributes>;

TensorAttributes input_tensor(fe::graph::Graph& graph, const char* name, TensorUid uid, std::vector<std::int64_t> dims,
                              std::vector<std::int64_t> strides) {
  return graph.tensor(fe::graph::Tensor_attributes().set_name(name).set_uid(uid).set_dim(dims).set_stride(strides));
}

void make_output(const TensorAttributes& t, TensorUid uid, std::vector<std::int64_t> dims,
                 std::vector<std::int64_t> strides) {
  t->set_output(true).set_uid(uid).set_dim(dims).set_stride(strides);
}

// SDPA_attributes or SDPA_backward_attributes with the 1/sqrt(Hs) scale and the causal mask: key j is
// visible to query i iff j <= i.
template <typename SdpaAttributes>
SdpaAttributes causal_sdpa(const char* name, const AttentionShape& s) {
  SdpaAttributes options;
  options.set_name(name)
      .set_attn_scale(s.scale())
      .set_diagonal_alignment(fe::DiagonalAlignment_t::TOP_LEFT)
      .set_diagonal_band_right_bound(0);
  return options;
}

// Forward: (q, k, v) -> (o, stats).
void define_forward(fe::graph::Graph& graph, const TensorAttributes& q, const TensorAttributes& k,
                    const TensorAttributes& v, const AttentionShape& s) {
  auto options = causal_sdpa<fe::graph::SDPA_attributes>("causal_attention", s);
  options.set_generate_stats(true);
  auto [o, stats] = graph.sdpa(q, k, v, options);
  make_output(o, kO, s.dims(s.Hq), s.att_strides());
  make_output(stats, kStats, s.stats_dims(), s.stats_strides());
  stats->set_data_type(fe::DataType_t::FLOAT);
}

// Backward: (q, k, v, o, do, stats) -> (dq, dk, dv).
void define_backward(fe::graph::Graph& graph, const TensorAttributes& q, const TensorAttributes& k,
                     const TensorAttributes& v, const AttentionShape& s) {
  auto o = input_tensor(graph, "o", kO, s.dims(s.Hq), s.att_strides());
  auto d_o = input_tensor(graph, "do", kDO, s.dims(s.Hq), s.att_strides());
  auto stats = input_tensor(graph, "stats", kStats, s.stats_dims(), s.stats_strides());
  stats->set_data_type(fe::DataType_t::FLOAT);
  auto options = causal_sdpa<fe::graph::SDPA_backward_attributes>("causal_attention_backward", s);
  // bit-reproducible dQ (no atomics): resuming from a checkpoint must replay exactly
  options.set_deterministic_algorithm(true);
  auto [dq, dk, dv] = graph.sdpa_backward(q, k, v, o, d_o, stats, options);
  make_output(dq, kDQ, s.dims(s.Hq), s.qkv_strides());
  make_output(dk, kDK, s.dims(s.Hkv), s.qkv_strides());
  make_output(dv, kDV, s.dims(s.Hkv), s.qkv_strides());
}

// The forward or backward graph (s.backward): bf16 tensors, fp32 accumulation, q, k, v inputs as
// strided views into the packed qkv.
std::shared_ptr<fe::graph::Graph> define_graph(const AttentionShape& s) {
  auto graph = std::make_shared<fe::graph::Graph>();
  graph->set_io_data_type(fe::DataType_t::BFLOAT16)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  auto q = input_tensor(*graph, "q", kQ, s.dims(s.Hq), s.qkv_strides());
  auto k = input_tensor(*graph, "k", kK, s.dims(s.Hkv), s.qkv_strides());
  auto v = input_tensor(*graph, "v", kV, s.dims(s.Hkv), s.qkv_strides());
  if (s.backward) {
    define_backward(*graph, q, k, v, s);
  } else {
    define_forward(*graph, q, k, v, s);
  }
  return graph;
}

struct BuiltGraph {
  std::shared_ptr<fe::graph::Graph> graph;
  std::int64_t workspace_bytes = 0;
};

BuiltGraph build_graph(cudnnHandle_t handle, const AttentionShape& s) {
  BuiltGraph built{define_graph(s)};
  fe::graph::Graph& g = *built.graph;
  check_frontend(g.validate(), "validate", s);
  check_frontend(g.build_operation_graph(handle), "build_operation_graph", s);
  check_frontend(g.create_execution_plans({fe::HeurMode_t::A, fe::HeurMode_t::FALLBACK}), "create_execution_plans", s);
  check_frontend(g.check_support(), "check_support", s);
  check_frontend(g.build_plans(fe::BuildPlanPolicy_t::HEURISTICS_CHOICE), "build_plans", s);
  check_frontend(g.get_workspace_size(built.workspace_bytes), "get_workspace_size", s);
  return built;
}

void check_shape(int B, int T, int Hq, int Hkv, int Hs) {
  LLMQ_REQUIRE(B > 0 && T > 0 && Hq > 0 && Hkv > 0 && Hs > 0,
               "attention: sizes must be positive, got B={} T={} Hq={} Hkv={} Hs={}", B, T, Hq, Hkv, Hs);
  LLMQ_REQUIRE(Hq % Hkv == 0, "attention: Hq={} query heads is not a multiple of Hkv={} kv heads", Hq, Hkv);
  LLMQ_REQUIRE(Hs % 8 == 0 && Hs <= 256, "attention (cuDNN, bf16): head size {} unsupported: use a multiple of 8 "
               "up to 256 (Qwen2.5 uses 64 or 128), or fp32", Hs);
}

// The address `elements` bf16 values after p (q, k, v start at different heads of one packed row).
void* bf16_offset(const void* p, std::size_t elements) {
  return const_cast<std::byte*>(static_cast<const std::byte*>(p)) + elements * 2;
}

// Variant-pack entries for the q, k, v heads (or dq, dk, dv) of one packed [B, T, Hq+2*Hkv, Hs] row.
void add_head_views(std::unordered_map<std::int64_t, void*>& pack, const void* packed, TensorUid q, TensorUid k,
                    TensorUid v, int Hq, int Hkv, int Hs) {
  pack[q] = bf16_offset(packed, 0);
  pack[k] = bf16_offset(packed, static_cast<std::size_t>(Hq) * Hs);
  pack[v] = bf16_offset(packed, static_cast<std::size_t>(Hq + Hkv) * Hs);
}

void check_aligned(const void* p, const char* name) {
  LLMQ_REQUIRE(reinterpret_cast<std::uintptr_t>(p) % 16 == 0,
               "attention (cuDNN): {} pointer {} is not 16-byte aligned (cuDNN's SDPA kernels load 16 bytes at once)",
               name, p);
}

}  // namespace

struct AttentionContext::Impl {
  cudnnHandle_t handle = nullptr;
  std::unordered_map<AttentionShape, BuiltGraph, AttentionShapeHash> graphs;

  const BuiltGraph& graph(const AttentionShape& s) {
    auto it = graphs.find(s);
    if (it == graphs.end()) it = graphs.emplace(s, build_graph(handle, s)).first;
    return it->second;
  }

  void execute(const AttentionShape& s, std::unordered_map<std::int64_t, void*>& pack, void* workspace,
               std::size_t workspace_size, cudaStream_t stream) {
    const BuiltGraph& built = graph(s);
    LLMQ_REQUIRE(workspace_size >= static_cast<std::size_t>(built.workspace_bytes),
                 "attention {} ({}): workspace of {} bytes given, {} needed (ask AttentionContext::workspace_bytes)",
                 s.backward ? "backward" : "forward", s.describe(), workspace_size, built.workspace_bytes);
    LLMQ_REQUIRE(workspace != nullptr || built.workspace_bytes == 0, "attention ({}): workspace pointer is null",
                 s.describe());
    LLMQ_CUDNN_CHECK(cudnnSetStream(handle, stream));
    check_frontend(built.graph->execute(handle, pack, workspace), "execute", s);
  }
};

AttentionContext::AttentionContext() : impl_(std::make_unique<Impl>()) {
  LLMQ_CUDNN_CHECK(cudnnCreate(&impl_->handle));
}

AttentionContext::~AttentionContext() {
  impl_->graphs.clear();  // plans before the handle
  if (impl_->handle) cudnnDestroy(impl_->handle);
}

std::size_t AttentionContext::cached_graphs() const { return impl_->graphs.size(); }

std::size_t AttentionContext::workspace_bytes(int B, int T, int Hq, int Hkv, int Hs) {
  check_shape(B, T, Hq, Hkv, Hs);
  const auto forward = impl_->graph({B, T, Hq, Hkv, Hs, false}).workspace_bytes;
  const auto backward = impl_->graph({B, T, Hq, Hkv, Hs, true}).workspace_bytes;
  return static_cast<std::size_t>(std::max(forward, backward));
}

void AttentionContext::forward(void* att, float* lse, const void* qkv, int B, int T, int Hq, int Hkv, int Hs,
                               void* workspace, std::size_t workspace_size, cudaStream_t stream) {
  check_shape(B, T, Hq, Hkv, Hs);
  check_aligned(att, "att");
  check_aligned(lse, "lse");
  check_aligned(qkv, "qkv");
  std::unordered_map<std::int64_t, void*> pack = {{kO, att}, {kStats, lse}};
  add_head_views(pack, qkv, kQ, kK, kV, Hq, Hkv, Hs);
  impl_->execute({B, T, Hq, Hkv, Hs, false}, pack, workspace, workspace_size, stream);
}

void AttentionContext::backward(void* d_qkv, const void* d_att, const void* att, const float* lse, const void* qkv,
                                int B, int T, int Hq, int Hkv, int Hs, void* workspace, std::size_t workspace_size,
                                cudaStream_t stream) {
  check_shape(B, T, Hq, Hkv, Hs);
  check_aligned(d_qkv, "d_qkv");
  check_aligned(d_att, "d_att");
  check_aligned(att, "att");
  check_aligned(lse, "lse");
  check_aligned(qkv, "qkv");
  std::unordered_map<std::int64_t, void*> pack = {
      {kO, const_cast<void*>(att)},
      {kDO, const_cast<void*>(d_att)},
      {kStats, const_cast<float*>(lse)},
  };
  add_head_views(pack, qkv, kQ, kK, kV, Hq, Hkv, Hs);
  add_head_views(pack, d_qkv, kDQ, kDK, kDV, Hq, Hkv, Hs);
  impl_->execute({B, T, Hq, Hkv, Hs, true}, pack, workspace, workspace_size, stream);
}

// ---- Tensor-level wrappers ----------------------------------------------------------------------

namespace {

struct AttentionDims {
  int B, T, Hq, Hkv, Hs;
};

// Reads B, T, Hs from qkv [B, T, Hq+2*Hkv, Hs] or [B, T, (Hq+2*Hkv)*Hs].
AttentionDims dims_from_qkv(const Tensor& qkv, int Hq, int Hkv) {
  LLMQ_REQUIRE(Hq > 0 && Hkv > 0 && Hq % Hkv == 0,
               "attention: Hq={} query heads must be a positive multiple of Hkv={} kv heads", Hq, Hkv);
  LLMQ_REQUIRE(!qkv.empty() && (qkv.rank == 3 || qkv.rank == 4) && qkv.location == Location::Device,
               "attention: qkv {} should be a device tensor [B, T, Hq+2*Hkv, Hs] or [B, T, (Hq+2*Hkv)*Hs]",
               qkv.describe());
  const std::int64_t heads = Hq + 2 * Hkv;
  const std::int64_t per_token = qkv.rank == 4 ? qkv.size(2) * qkv.size(3) : qkv.size(2);
  LLMQ_REQUIRE(per_token % heads == 0 && (qkv.rank == 3 || qkv.size(2) == heads),
               "attention: qkv {} does not hold Hq+2*Hkv = {}+2*{} = {} heads per token", qkv.describe(), Hq, Hkv,
               heads);
  return {static_cast<int>(qkv.size(0)), static_cast<int>(qkv.size(1)), Hq, Hkv,
          static_cast<int>(per_token / heads)};
}

void require_att_shape(const Tensor& t, const char* name, const AttentionDims& d, DType dtype) {
  LLMQ_REQUIRE(!t.empty() && t.location == Location::Device && t.dtype == dtype && t.rank >= 3 && t.size(0) == d.B &&
                   t.size(1) == d.T && t.numel() == static_cast<std::int64_t>(d.B) * d.T * d.Hq * d.Hs,
               "attention: {} {} should be a {} device tensor [B, T, Hq, Hs] = [{}, {}, {}, {}]", name, t.describe(),
               dtype_name(dtype), d.B, d.T, d.Hq, d.Hs);
}

void require_lse_shape(const Tensor& t, const AttentionDims& d) {
  LLMQ_REQUIRE(!t.empty() && t.location == Location::Device && t.dtype == DType::FP32 && t.rank == 3 &&
                   t.size(0) == d.B && t.size(1) == d.Hq && t.size(2) == d.T,
               "attention: lse {} should be an fp32 device tensor [B, Hq, T] = [{}, {}, {}]", t.describe(), d.B, d.Hq,
               d.T);
}

void require_supported_dtype(const Tensor& qkv) {
  LLMQ_REQUIRE(qkv.dtype == DType::BF16 || qkv.dtype == DType::FP32,
               "attention: qkv {} has dtype {}; attention supports bf16 (cuDNN) and fp32", qkv.describe(),
               dtype_name(qkv.dtype));
}

}  // namespace

void attention_forward(AttentionContext& ctx, const Tensor& att, const Tensor& lse, const Tensor& qkv, int Hq,
                       int Hkv, const Tensor& workspace, cudaStream_t stream) {
  const AttentionDims d = dims_from_qkv(qkv, Hq, Hkv);
  require_supported_dtype(qkv);
  require_att_shape(att, "att", d, qkv.dtype);
  require_lse_shape(lse, d);
  if (qkv.dtype == DType::FP32) {
    attention_forward_fp32(att.get<float>(), lse.get<float>(), qkv.get<float>(), d.B, d.T, d.Hq, d.Hkv, d.Hs, stream);
    return;
  }
  ctx.forward(att.data, lse.get<float>(), qkv.data, d.B, d.T, d.Hq, d.Hkv, d.Hs, workspace.data,
              workspace.empty() ? 0 : workspace.bytes(), stream);
}

void attention_backward(AttentionContext& ctx, const Tensor& d_qkv, const Tensor& d_att, const Tensor& att,
                        const Tensor& lse, const Tensor& qkv, int Hq, int Hkv, const Tensor& workspace,
                        cudaStream_t stream) {
  const AttentionDims d = dims_from_qkv(qkv, Hq, Hkv);
  require_supported_dtype(qkv);
  LLMQ_REQUIRE(!d_qkv.empty() && d_qkv.location == Location::Device && d_qkv.dtype == qkv.dtype &&
                   d_qkv.numel() == qkv.numel(),
               "attention: d_qkv {} should have the shape and dtype of qkv {}", d_qkv.describe(), qkv.describe());
  require_att_shape(att, "att", d, qkv.dtype);
  require_att_shape(d_att, "d_att", d, qkv.dtype);
  require_lse_shape(lse, d);
  if (qkv.dtype == DType::FP32) {
    attention_backward_fp32(d_qkv.get<float>(), d_att.get<float>(), att.get<float>(), lse.get<float>(),
                            qkv.get<float>(), d.B, d.T, d.Hq, d.Hkv, d.Hs, stream);
    return;
  }
  ctx.backward(d_qkv.data, d_att.data, att.data, lse.get<float>(), qkv.data, d.B, d.T, d.Hq, d.Hkv, d.Hs,
               workspace.data, workspace.empty() ? 0 : workspace.bytes(), stream);
}

}  // namespace llmq::kernels
