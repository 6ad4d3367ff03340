// Builds the model a training run asks for: resolves --model (directory, HF cache name or preset),
// reads its config, and loads its weights or initialises them (--from-scratch).
#pragma once
#include <memory>

#include "training/model.h"
#include "training/options.h"

namespace llmq {

std::unique_ptr<Model> build_model(const TrainOptions& opts);

// --auto-fit: replaces the recompute and offload flags (and, if nothing fits otherwise, the
// micro-batch size and accumulation, keeping tokens per step) with the fastest choice that fits
// --memory-limit (model/auto_fit.h), and prints it.
void apply_auto_fit(TrainOptions& opts);

}  // namespace llmq
