// Builds the model a training run asks for: resolves --model (directory, HF cache name or preset),
// reads its config, and loads its weights or initialises them (--from-scratch).
#pragma once
#include <memory>

#include "training/model.h"
#include "training/options.h"

namespace llmq {

std::unique_ptr<Model> build_model(const TrainOptions& opts);

}  // namespace llmq
