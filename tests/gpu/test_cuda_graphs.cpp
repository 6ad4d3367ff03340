// CUDA graphs (QwenModelOptions::use_cuda_graphs) on the GPU. A graph replays exactly the kernels,
// arguments and order of the eager step, so training with graphs must give EXACTLY the eager run's
// losses, gradient norms, evaluation loss and final weights (EXPECT_EQ, no tolerance), every
// micro-step after the first (which is eager by design) must really have run as a graph, and each
// micro-step position must have been captured only once.
// A tiny Qwen2-shaped model (3 layers, C 256, D 512, 4 query / 2 kv heads of 64, V 1000, q/k/v
// biases), bf16, random init, B 2 x T 128, 4 optimizer steps of 2 accumulated micro-batches. Step 3's
// second micro-batch ignores some targets, so its loss scale differs from the others': a replayed
// graph must read it from device memory, not bake in the value it was captured with.
#include <cuda_bf16.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/errors.h"
#include "model/config.h"
#include "model/qwen_model.h"
#include "model_test_utils.h"

using namespace llmq;

namespace {

constexpr int kB = 2, kT = 128, kAccum = 2, kSteps = 4;
constexpr int kMicroSteps = kSteps * kAccum;

// Seeded random micro-batch; all targets valid except in step 3's second micro-batch, where every
// 5th target is ignored (-1): a different valid count, hence a different loss scale.
void next_batch(std::mt19937& rng, int V, int step, int micro, std::vector<std::int32_t>& inputs,
                std::vector<std::int32_t>& targets) {
  const bool some_ignored = step == 3 && micro == 1;
  test::random_batch(rng, V, kB * kT, /*ignore_every=*/some_ignored ? 5 : 0, inputs, targets);
}

struct RunResult {
  std::vector<StepResult> steps;
  float eval_loss = 0;
  std::map<std::string, test::Bytes> exported;  // file name -> bytes of the exported model
  int graph_launches = 0;
  int graph_captures = 0;
};

QwenModelOptions model_options(bool graphs) {
  QwenModelOptions o = test::tiny_qwen2_options(kB, kT, kAccum, /*seed=*/1234);
  o.use_cuda_graphs = graphs;
  return o;
}

int graph_launches(const Model& model) {
  const auto* qwen = dynamic_cast<const QwenModel<nv_bfloat16>*>(&model);
  return qwen ? qwen->cuda_graph_launches() : -1;
}

int graph_captures(const Model& model) {
  const auto* qwen = dynamic_cast<const QwenModel<nv_bfloat16>*>(&model);
  return qwen ? qwen->cuda_graph_captures() : -1;
}

RunResult train(const QwenModelOptions& opts) {
  const ModelConfig cfg = test::tiny_qwen2_config();
  std::unique_ptr<Model> model = make_qwen_model(cfg, opts, {});
  std::mt19937 rng(20261122);
  auto batch = [&](int step, int micro, auto& inputs, auto& targets) {
    next_batch(rng, cfg.vocab_size, step, micro, inputs, targets);
  };
  RunResult r;
  r.steps = test::train_steps(*model, test::adamw_at(1e-3f), kAccum, 1, kSteps, batch);
  std::vector<std::int32_t> inputs, targets;
  next_batch(rng, cfg.vocab_size, 0, 0, inputs, targets);
  r.eval_loss = model->evaluate(inputs.data(), targets.data());
  r.exported = test::exported_files(*model);
  r.graph_launches = graph_launches(*model);
  r.graph_captures = graph_captures(*model);
  return r;
}

void expect_bit_identical(const RunResult& run, const RunResult& eager) {
  for (std::size_t i = 0; i < eager.steps.size(); ++i)
    EXPECT_TRUE(std::isfinite(eager.steps[i].loss) && std::isfinite(eager.steps[i].grad_norm)) << "step " << i + 1;
  test::expect_same_steps(run.steps, eager.steps);
  EXPECT_EQ(run.eval_loss, eager.eval_loss);
  test::expect_same_bytes(run.exported, eager.exported, "exported file");
}

// Runs `opts` eagerly and with graphs; the graph run must match bit for bit and must have launched
// a graph for every micro-step but the first.
void expect_graphs_match_eager(QwenModelOptions opts) {
  opts.use_cuda_graphs = false;
  const RunResult eager = train(opts);
  EXPECT_EQ(eager.graph_launches, 0);
  opts.use_cuda_graphs = true;
  const RunResult graphs = train(opts);
  EXPECT_EQ(graphs.graph_launches, kMicroSteps - 1) << "capture failed (see the warning above) or graphs unused";
  EXPECT_EQ(graphs.graph_captures, kAccum) << "one capture per micro-step position, replayed afterwards";
  expect_bit_identical(graphs, eager);
}

}  // namespace

TEST(CudaGraphs, OffUnlessRequested) { EXPECT_FALSE(QwenModelOptions{}.use_cuda_graphs); }

TEST(CudaGraphs, Bf16MatchesEagerBitForBit) { expect_graphs_match_eager(model_options(true)); }

TEST(CudaGraphs, Fp8MatchesEagerBitForBit) {
  QwenModelOptions o = model_options(true);
  o.matmul_dtype = DType::E4M3;
  o.gradient_dtype = DType::E5M2;
  expect_graphs_match_eager(o);
}

TEST(CudaGraphs, BlockRecomputeMatchesEagerBitForBit) {
  QwenModelOptions o = model_options(true);
  o.recompute.block = true;
  expect_graphs_match_eager(o);
}

// Offloading copies layers on streams of their own: such a model ignores the request and runs
// eagerly, with the same results.
TEST(CudaGraphs, OffloadingRunsEagerly) {
  QwenModelOptions o = model_options(true);
  o.offload_residual = true;
  const RunResult graphs = train(o);
  EXPECT_EQ(graphs.graph_launches, 0);
  o.use_cuda_graphs = false;
  expect_bit_identical(graphs, train(o));
}

// A bad micro-step index is refused on the host before anything is captured, and the graphs keep
// working afterwards.
TEST(CudaGraphs, BadMicroStepIsRefusedAndGraphsStillRun) {
  const ModelConfig cfg = test::tiny_qwen2_config();
  std::unique_ptr<Model> model = make_qwen_model(cfg, model_options(true), {});
  std::mt19937 rng(7);
  std::vector<std::int32_t> inputs, targets;
  next_batch(rng, cfg.vocab_size, 1, 0, inputs, targets);
  model->forward_backward(inputs.data(), targets.data(), 0);  // eager warm-up
  EXPECT_THROW(model->forward_backward(inputs.data(), targets.data(), kAccum), Error);
  EXPECT_THROW(model->forward_backward(inputs.data(), targets.data(), -1), Error);
  model->forward_backward(inputs.data(), targets.data(), 1);
  EXPECT_EQ(graph_launches(*model), 1);
  AdamWSettings adam;
  const StepResult s = model->optimizer_step(adam, 1);
  EXPECT_TRUE(std::isfinite(s.loss) && std::isfinite(s.grad_norm));
}
