// The Model interface: the only view of the network the training loop has. The loop feeds token
// batches, asks for a step, and saves or exports; how the model computes (kernels, sharding,
// offloading, recomputation) stays behind this interface.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>

namespace llmq {

class Allocator;

// Results of one optimizer step as the console and log report them.
struct StepResult {
  float loss = 0;       // mean loss over the step's (non-ignored) target tokens
  float grad_norm = 0;  // global gradient norm before clipping
};

struct AdamWSettings {
  float learning_rate = 0;
  float beta1 = 0.9f, beta2 = 0.95f, epsilon = 1e-8f;
  float weight_decay = 0.1f;  // applied to matrices only
  float grad_clip = 1.0f;     // max global norm; <= 0 disables clipping
};

class Model {
 public:
  virtual ~Model() = default;

  // One micro-batch: forward and backward, gradients accumulated. inputs/targets are host arrays
  // of B*T int32 (target -1 = no loss). `micro_step` counts from 0 within the optimizer step.
  virtual void forward_backward(const std::int32_t* inputs, const std::int32_t* targets, int micro_step) = 0;
  // Clips, applies AdamW with the given settings (step counts from 1), zeroes the gradients and
  // returns the step's loss and gradient norm (the only host synchronisation of a step).
  virtual StepResult optimizer_step(const AdamWSettings& settings, int step) = 0;
  // Mean loss of one batch without touching gradients.
  virtual float evaluate(const std::int32_t* inputs, const std::int32_t* targets) = 0;

  // Checkpoint: everything needed to resume bit-for-bit (weights, master weights, optimizer
  // state, RNG state) into `dir`, which exists and is empty.
  virtual void save_checkpoint(const std::filesystem::path& dir) const = 0;
  virtual void load_checkpoint(const std::filesystem::path& dir) = 0;
  // HF-compatible model.safetensors + config.json into `dir`.
  virtual void export_model(const std::filesystem::path& dir) const = 0;

  virtual double training_flops_per_token() const = 0;
  virtual int vocab_size() const = 0;
  virtual const Allocator& allocator() const = 0;
};

}  // namespace llmq
