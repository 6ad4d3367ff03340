// CUDA graphs (QwenModelOptions::use_cuda_graphs) on the GPU. A graph replays exactly the kernels,
// arguments and order of the eager step, so training with graphs must give EXACTLY the eager run's
// losses, gradient norms, evaluation loss and final weights (EXPECT_EQ, no tolerance), and every
// micro-step after the first (which is eager by design) must really have run as a graph.
// A tiny Qwen2-shaped model (3 layers, C 256, D 512, 4 query / 2 kv heads of 64, V 1000, q/k/v
// biases), bf16, random init, B 2 x T 128, 4 optimizer steps of 2 accumulated micro-batches. Step 3's
// second micro-batch ignores some targets, so its loss scale differs from the others' and the
// executable graph must take the new argument through its in-place update.
#include <cuda_bf16.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "../unit/test_util.h"
#include "core/errors.h"
#include "model/config.h"
#include "model/qwen_model.h"

using namespace llmq;

namespace {

constexpr int kB = 2, kT = 128, kAccum = 2, kSteps = 4;
constexpr int kMicroSteps = kSteps * kAccum;

ModelConfig tiny_qwen() {
  ModelConfig c;
  c.name = "tiny-qwen2";
  c.architecture = Architecture::Qwen2;
  c.hidden_size = 256;
  c.intermediate_size = 512;
  c.num_layers = 3;
  c.num_query_heads = 4;
  c.num_kv_heads = 2;
  c.head_size = 64;  // cuDNN SDPA: a multiple of 8, at most 256
  c.vocab_size = 1000;
  c.tie_word_embeddings = false;
  c.rope_theta = 1e6;
  c.rms_norm_eps = 1e-6;
  c.max_position_embeddings = 4096;
  c.qkv_bias = true;
  validate_config(c, c.name);
  return c;
}

// Seeded random micro-batch; all targets valid except in step 3's second micro-batch, where every
// 5th target is ignored (-1): a different valid count, hence a different loss scale.
void random_batch(std::mt19937& rng, int V, int step, int micro, std::vector<std::int32_t>& inputs,
                  std::vector<std::int32_t>& targets) {
  std::uniform_int_distribution<std::int32_t> token(0, V - 1);
  const bool some_ignored = step == 3 && micro == 1;
  inputs.resize(kB * kT);
  targets.resize(kB * kT);
  for (int i = 0; i < kB * kT; ++i) {
    inputs[i] = token(rng);
    targets[i] = some_ignored && i % 5 == 0 ? -1 : token(rng);
  }
}

std::map<std::string, std::string> read_files(const std::filesystem::path& dir) {
  std::map<std::string, std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    std::ifstream in(entry.path(), std::ios::binary);
    std::ostringstream bytes;
    bytes << in.rdbuf();
    files[entry.path().filename().string()] = bytes.str();
  }
  return files;
}

struct RunResult {
  std::vector<float> loss, grad_norm;
  float eval_loss = 0;
  std::map<std::string, std::string> exported;  // file name -> bytes of the exported model
  int graph_launches = 0;
};

QwenModelOptions model_options(bool graphs) {
  QwenModelOptions o;
  o.model_dtype = DType::BF16;
  o.batch_size = kB;
  o.seq_len = kT;
  o.grad_accumulation = kAccum;
  o.seed = 1234;
  o.use_cuda_graphs = graphs;
  return o;
}

int graph_launches(const Model& model) {
  const auto* qwen = dynamic_cast<const QwenModel<nv_bfloat16>*>(&model);
  return qwen ? qwen->cuda_graph_launches() : -1;
}

RunResult train(const QwenModelOptions& opts) {
  const ModelConfig cfg = tiny_qwen();
  std::unique_ptr<Model> model = make_qwen_model(cfg, opts, {});
  AdamWSettings adam;
  adam.learning_rate = 1e-3f;
  std::mt19937 rng(20261122);
  std::vector<std::int32_t> inputs, targets;
  RunResult r;
  for (int step = 1; step <= kSteps; ++step) {
    for (int micro = 0; micro < kAccum; ++micro) {
      random_batch(rng, cfg.vocab_size, step, micro, inputs, targets);
      model->forward_backward(inputs.data(), targets.data(), micro);
    }
    const StepResult s = model->optimizer_step(adam, step);
    r.loss.push_back(s.loss);
    r.grad_norm.push_back(s.grad_norm);
  }
  random_batch(rng, cfg.vocab_size, 0, 0, inputs, targets);
  r.eval_loss = model->evaluate(inputs.data(), targets.data());
  test::TempDir dir;
  model->export_model(dir.path());
  r.exported = read_files(dir.path());
  r.graph_launches = graph_launches(*model);
  return r;
}

void expect_bit_identical(const RunResult& run, const RunResult& eager) {
  ASSERT_EQ(run.loss.size(), eager.loss.size());
  for (std::size_t i = 0; i < eager.loss.size(); ++i) {
    EXPECT_TRUE(std::isfinite(eager.loss[i]) && std::isfinite(eager.grad_norm[i])) << "step " << i + 1;
    EXPECT_EQ(run.loss[i], eager.loss[i]) << "loss of step " << i + 1;
    EXPECT_EQ(run.grad_norm[i], eager.grad_norm[i]) << "gradient norm of step " << i + 1;
  }
  EXPECT_EQ(run.eval_loss, eager.eval_loss);
  ASSERT_EQ(run.exported.size(), eager.exported.size());
  for (const auto& [name, bytes] : eager.exported) {
    const auto it = run.exported.find(name);
    ASSERT_NE(it, run.exported.end()) << name << " was not exported";
    EXPECT_TRUE(it->second == bytes) << name << ": exported weights differ after " << kSteps << " steps";
  }
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

// A bad micro-step index is refused on the host before anything is captured, and the graphs keep
// working afterwards.
TEST(CudaGraphs, BadMicroStepIsRefusedAndGraphsStillRun) {
  const ModelConfig cfg = tiny_qwen();
  std::unique_ptr<Model> model = make_qwen_model(cfg, model_options(true), {});
  std::mt19937 rng(7);
  std::vector<std::int32_t> inputs, targets;
  random_batch(rng, cfg.vocab_size, 1, 0, inputs, targets);
  model->forward_backward(inputs.data(), targets.data(), 0);  // eager warm-up
  EXPECT_THROW(model->forward_backward(inputs.data(), targets.data(), kAccum), Error);
  EXPECT_THROW(model->forward_backward(inputs.data(), targets.data(), -1), Error);
  model->forward_backward(inputs.data(), targets.data(), 1);
  EXPECT_EQ(graph_launches(*model), 1);
  AdamWSettings adam;
  const StepResult s = model->optimizer_step(adam, 1);
  EXPECT_TRUE(std::isfinite(s.loss) && std::isfinite(s.grad_norm));
}
