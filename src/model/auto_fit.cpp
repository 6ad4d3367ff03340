// --auto-fit: see auto_fit.h.
#include "model/auto_fit.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>

#include "core/allocator.h"
#include "core/errors.h"

namespace llmq {

namespace {
constexpr double kMatmulEfficiency = 0.55;  // share of the dense peak the block GEMMs reach
constexpr double kHbmBytesPerSecond = 2.5e12;
constexpr double kPcieBytesPerSecond = 20e9;  // per direction, pinned memory

struct RecomputeLevel {
  const char* flags;
  RecomputeOptions options;
};
const RecomputeLevel kRecomputeLevels[] = {
    {"", {}},
    {"--recompute-swiglu", {.swiglu = true}},
    {"--recompute-swiglu --recompute-norm", {.swiglu = true, .norm = true}},
    {"--recompute-ffn --recompute-norm", {.norm = true, .ffn = true}},
    {"--recompute-att --recompute-ffn --recompute-norm", {.norm = true, .ffn = true, .att = true}},
    {"--recompute-block", {.block = true}},
};

struct OffloadSet {
  const char* flags;
  bool master, gradients, opt_m, opt_v;
};
const OffloadSet kOffloadSets[] = {
    {"", false, false, false, false},
    {"--offload-opt-v", false, false, false, true},
    {"--offload-opt-m --offload-opt-v", false, false, true, true},
    {"--offload-master", true, false, false, false},
    {"--offload-master --offload-opt-v", true, false, false, true},
    {"--offload-master --offload-opt-m --offload-opt-v", true, false, true, true},
    {"--offload-gradients", false, true, false, false},
    {"--offload-gradients --offload-opt-v", false, true, false, true},
    {"--offload-gradients --offload-opt-m --offload-opt-v", false, true, true, true},
    {"--offload-master --offload-gradients", true, true, false, false},
    {"--offload-master --offload-gradients --offload-opt-v", true, true, false, true},
    {"--offload-master --offload-gradients --offload-opt-m --offload-opt-v", true, true, true, true},
};

std::string join_flags(const std::string& a, const std::string& b) {
  if (a.empty()) return b;
  if (b.empty()) return a;
  return a + " " + b;
}

// Elements of the block matrices of all layers (what --offload-master / --offload-gradients move).
double block_matrix_elements(const ModelConfig& cfg) {
  const double C = cfg.hidden_size, D = cfg.intermediate_size;
  return cfg.num_layers * (C * cfg.qkv_channels() + cfg.q_channels() * C + 3 * C * D);
}

// Extra forward work per micro-step of the recompute plan: FLOPs and elementwise bytes.
std::pair<double, double> recompute_work(const ModelConfig& cfg, const QwenModelOptions& o) {
  const RecomputeOptions rc = o.recompute.resolved();
  const double N = static_cast<double>(o.batch_size) * o.seq_len, C = cfg.hidden_size, D = cfg.intermediate_size;
  const double elem = dtype_size(o.model_dtype);
  double flops = 0, bytes = 0;
  if (rc.swiglu) bytes += N * 3 * D * elem;
  if (rc.norm) bytes += 2 * N * 2 * C * elem;
  if (rc.ffn) flops += 2 * N * C * 2 * D;
  if (rc.qkv) flops += 2 * N * C * cfg.qkv_channels();
  if (rc.att) flops += 2 * N * o.seq_len * cfg.q_channels();  // QK^T and PV over the causal half
  if (rc.block) flops += 2 * N * cfg.q_channels() * C, bytes += N * 3 * C * elem;
  return {flops * cfg.num_layers, bytes * cfg.num_layers};
}
}  // namespace

double cost_seconds(const ModelConfig& cfg, const QwenModelOptions& o, double peak_flops) {
  const double rate = kMatmulEfficiency * peak_flops;
  const double elem = dtype_size(o.model_dtype);
  const auto [re_flops, re_bytes] = recompute_work(cfg, o);
  const double compute = static_cast<double>(o.batch_size) * o.seq_len * static_cast<double>(cfg.training_flops_per_token(o.seq_len)) / rate + re_flops / rate +
                         re_bytes / kHbmBytesPerSecond;

  // Streamed layers per micro-step (see layer_streamer.h); FP8 block GEMMs read the FP8 copies.
  const double block_bytes = block_matrix_elements(cfg) * elem;
  const bool fp8 = o.matmul_dtype == DType::E4M3, fp8_backward = fp8 && o.gradient_dtype == DType::E5M2;
  const int accum = o.grad_accumulation;
  double up = 0, down = 0;
  if (o.offload_master) up += block_bytes * ((fp8 ? 0 : 1) + (fp8_backward ? 0 : 1));
  if (o.offload_gradients) {
    down += block_bytes;
    up += block_bytes * (accum - 1) / accum;  // partial sums come back after the first micro-step
  }
  const double N = static_cast<double>(o.batch_size) * o.seq_len;
  if (o.offload_residual) {  // each residual goes out in the forward pass and comes back in the backward
    const double residual_bytes = (cfg.num_layers + 1) * N * cfg.hidden_size * elem;
    up += residual_bytes;
    down += residual_bytes;
  }
  const double fp8_block_bytes = block_matrix_elements(cfg);  // one byte per element
  if (o.offload_quants) up += fp8_block_bytes * (fp8_backward ? 2 : 1);
  const double micro = std::max(compute, std::max(up, down) / kPcieBytesPerSecond);

  // Optimizer: every element's weights, gradient and moments pass through AdamW once.
  const double P = static_cast<double>(cfg.matmul_parameter_count());
  const double m_bytes = P * dtype_size(o.opt_m_dtype), v_bytes = P * dtype_size(o.opt_v_dtype);
  double opt_up = 0, opt_down = 0;
  if (o.offload_master) opt_up += 2 * block_bytes, opt_down += block_bytes;  // update, then FP8 re-quantization
  if (o.offload_gradients) opt_up += block_bytes;
  if (o.offload_opt_m) opt_up += m_bytes, opt_down += m_bytes;
  if (o.offload_opt_v) opt_up += v_bytes, opt_down += v_bytes;
  if (o.offload_quants) opt_down += fp8_block_bytes;  // the re-quantized weights go out once per step
  const double optimizer = std::max(opt_up, opt_down) / kPcieBytesPerSecond +
                           2 * (2 * P * elem + m_bytes + v_bytes) / kHbmBytesPerSecond;
  return accum * micro + optimizer;
}

std::vector<FitCandidate> fit_candidates(const ModelConfig& cfg, const QwenModelOptions& base, double peak_flops) {
  std::vector<FitCandidate> out;
  const bool fp8 = base.matmul_dtype == DType::E4M3;
  for (const RecomputeLevel& r : kRecomputeLevels) {
    for (const OffloadSet& s : kOffloadSets) {
      for (const bool residual : {false, true}) {
        for (const bool quants : {false, true}) {
          if (quants && !fp8) continue;  // without FP8 there are no quantized copies
          FitCandidate c;
          c.opts = base;
          c.opts.recompute = r.options;
          c.opts.offload_master = s.master;
          c.opts.offload_gradients = s.gradients;
          c.opts.offload_opt_m = s.opt_m;
          c.opts.offload_opt_v = s.opt_v;
          c.opts.offload_residual = residual;
          c.opts.offload_quants = quants;
          c.opts.use_zero_copy = false;
          c.flags = join_flags(join_flags(r.flags, s.flags),
                               join_flags(residual ? "--offload-residual" : "", quants ? "--offload-quants" : ""));
          c.est_step_seconds = cost_seconds(cfg, c.opts, peak_flops);
          out.push_back(c);
        }
      }
    }
  }
  // Stable: equal estimates keep the order above (less recomputation, fewer offloads first).
  std::stable_sort(out.begin(), out.end(),
                   [](const FitCandidate& a, const FitCandidate& b) { return a.est_step_seconds < b.est_step_seconds; });
  return out;
}

AutoFitResult auto_fit(const ModelConfig& cfg, const QwenModelOptions& base, std::size_t limit, double peak_flops) {
  AutoFitResult result;
  QwenModelOptions opts = base;
  for (;;) {
    std::vector<FitCandidate> candidates = fit_candidates(cfg, opts, peak_flops);
    for (FitCandidate& c : candidates) {
      const MemoryPlan plan = plan_qwen_memory(cfg, c.opts);
      c.planned = true;
      c.device_bytes = plan.device_bytes;
      c.host_bytes = plan.host_bytes;
      c.fits = plan.device_bytes <= limit;
      result.tried.push_back(c);
      if (!c.fits) continue;
      result.choice = c;
      const std::string batch =
          opts.batch_size == base.batch_size
              ? std::string()
              : fmt::format(" with --batch-size={} --grad-accumulation={} (same tokens per step)", opts.batch_size,
                            opts.grad_accumulation);
      result.summary = fmt::format(
          "--auto-fit: {}{} fits --memory-limit={} (planned {} on the device, {} pinned host; estimated {:.2f} s "
          "per step, fastest of {} candidates planned)",
          c.flags.empty() ? "no recompute or offload flags" : c.flags, batch, format_bytes(limit),
          format_bytes(c.device_bytes), format_bytes(c.host_bytes), c.est_step_seconds, result.tried.size());
      return result;
    }
    if (opts.batch_size == 1) break;
    // The next smaller micro-batch that divides this one, so that tokens per step stay the same.
    int smaller = opts.batch_size / 2;
    while (opts.batch_size % smaller != 0) --smaller;
    opts.grad_accumulation *= opts.batch_size / smaller;
    opts.batch_size = smaller;
  }
  const auto best = std::min_element(result.tried.begin(), result.tried.end(), [](const auto& a, const auto& b) {
    return a.device_bytes < b.device_bytes;
  });
  throw Error(fmt::format("--auto-fit: nothing fits --memory-limit={}: the smallest plan ({}{}) needs {} on the "
                          "device; raise --memory-limit or use a shorter --seq-len",
                          format_bytes(limit), best->flags, best->opts.batch_size > 1 ? "" : ", micro-batch 1",
                          format_bytes(best->device_bytes)));
}

}  // namespace llmq
