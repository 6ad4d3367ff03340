// --auto-fit: the fastest placement of a run that fits --memory-limit.
//
// Candidates are every combination of a recompute level (none, swiglu, swiglu+norm, ffn+norm,
// att+ffn+norm, block) and the offloads (Adam v, Adam m+v; block weights; block gradients; the
// residual stream; with FP8 the quantized weights): 144, or 288 with FP8, all bit-identical in
// what they compute. Each gets an estimated step time from a cost
// model (cost_seconds) and, in order of that estimate, a memory plan (plan_qwen_memory, exact:
// the same allocations as the real run); the first that fits wins. When none fits at the given
// micro-batch, the micro-batch is halved and the accumulation doubled (same tokens per step).
//
// Cost model, per optimizer step (doc.md "Memory" gives the reasoning):
//   micro-step = max(matmul FLOPs / rate + recomputed FLOPs / rate + recomputed bytes / HBM,
//                    PCIe bytes of the streamed layers / PCIe)       (copies overlap compute)
//   step       = accumulation * micro-step + optimizer PCIe bytes / PCIe + optimizer bytes / HBM
// with rate = 55% of the GPU's dense peak for the matmul dtype, HBM 2.5 TB/s, PCIe 20 GB/s per
// direction. Only the order of the estimates matters; they are not a promise of speed.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/qwen_model.h"

namespace llmq {

struct FitCandidate {
  QwenModelOptions opts;
  std::string flags;           // the command-line flags that select it, "" for none
  double est_step_seconds = 0;
  std::size_t device_bytes = 0, host_bytes = 0;  // planned (0 until planned)
  bool planned = false, fits = false;
};

// Every candidate placement of `base` (recompute and offload flags replaced), cost estimated,
// sorted fastest first. peak_flops: the GPU's dense matmul peak for base.matmul_dtype.
std::vector<FitCandidate> fit_candidates(const ModelConfig& cfg, const QwenModelOptions& base, double peak_flops);

// Estimated seconds per optimizer step of `opts` (see the head comment).
double cost_seconds(const ModelConfig& cfg, const QwenModelOptions& opts, double peak_flops);

struct AutoFitResult {
  FitCandidate choice;
  std::vector<FitCandidate> tried;  // in the order planned, the choice last
  std::string summary;              // what was chosen and why, for the console
};

// The fastest candidate of `base` whose planned device bytes fit `limit`; throws llmq::Error
// (naming the smallest plan found) when none fits even at micro-batch 1.
AutoFitResult auto_fit(const ModelConfig& cfg, const QwenModelOptions& base, std::size_t limit, double peak_flops);

}  // namespace llmq
