// The training run: the loop (data, forward/backward, optimizer, evaluation, checkpoints, logging)
// and the final export. The concrete model comes from a factory, so the loop sees only Model.
#pragma once
#include <functional>
#include <memory>

#include "training/model.h"
#include "training/options.h"

namespace llmq {

using ModelFactory = std::function<std::unique_ptr<Model>(const TrainOptions&)>;

// Runs a whole training run on this process's GPU; returns the process exit code.
// Throws llmq::Error (one line, naming the cause and a fix) when the run cannot go on.
int run_training(const TrainOptions& opts, const ModelFactory& make_model);

}  // namespace llmq
