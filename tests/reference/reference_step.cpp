// reference_step: runs llmq's training step on a fixed batch so that compare_with_transformers.py
// can check it against PyTorch. Loads an HF model directory, runs --steps optimizer steps on the
// batch in --tokens (int32, B*(T+1) tokens: inputs are the first T of each row, targets the last T)
// and writes into --out: grads.safetensors (HF names, fp32, after the first forward/backward),
// losses.json ({"loss": [...], "norm": [...]}) and final/ (the exported model after the last step).
#include <CLI/CLI.hpp>
#include <cuda_bf16.h>
#include <fmt/format.h>

#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <vector>

#include "model/config.h"
#include "model/qwen_model.h"

using namespace llmq;

namespace {
template <typename T>
int run(const ModelConfig& cfg, const QwenModelOptions& opts, const std::filesystem::path& dir,
        const std::vector<std::int32_t>& inputs, const std::vector<std::int32_t>& targets, int steps,
        const AdamWSettings& adam, const std::filesystem::path& out) {
  QwenModel<T> model(cfg, opts);
  model.load_hf_weights(dir);
  nlohmann::json log = {{"loss", nlohmann::json::array()}, {"norm", nlohmann::json::array()}};
  for (int step = 1; step <= steps; ++step) {
    model.forward_backward(inputs.data(), targets.data(), 0);
    if (step == 1) model.export_gradients(out / "grads.safetensors");
    StepResult r = model.optimizer_step(adam, step);
    log["loss"].push_back(r.loss);
    log["norm"].push_back(r.grad_norm);
    fmt::print("step {:3d} loss {:.7f} norm {:.6f}\n", step, r.loss, r.grad_norm);
  }
  std::ofstream(out / "losses.json") << log.dump() << "\n";
  model.export_model(out / "final");
  return 0;
}
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"llmq reference step driver (tests/reference)"};
  std::string model_dir, tokens_path, out_dir, dtype = "fp32";
  int B = 1, T = 64, steps = 1;
  AdamWSettings adam;
  adam.learning_rate = 1e-3f;
  app.add_option("--model-dir", model_dir)->required();
  app.add_option("--tokens", tokens_path)->required();
  app.add_option("--out", out_dir)->required();
  app.add_option("--batch", B);
  app.add_option("--seq-len", T);
  app.add_option("--model-dtype", dtype);
  app.add_option("--steps", steps);
  app.add_option("--lr", adam.learning_rate);
  app.add_option("--beta-1", adam.beta1);
  app.add_option("--beta-2", adam.beta2);
  app.add_option("--adam-epsilon", adam.epsilon);
  app.add_option("--weight-decay", adam.weight_decay);
  app.add_option("--grad-clip", adam.grad_clip);
  CLI11_PARSE(app, argc, argv);
  try {
    ModelConfig cfg = load_config_json(std::filesystem::path(model_dir) / "config.json");
    std::vector<std::int32_t> tokens(static_cast<std::size_t>(B) * (T + 1));
    std::ifstream in(tokens_path, std::ios::binary);
    in.read(reinterpret_cast<char*>(tokens.data()), static_cast<std::streamsize>(tokens.size() * 4));
    if (!in) throw Error(fmt::format("{}: expected {} int32 tokens", tokens_path, tokens.size()));
    std::vector<std::int32_t> inputs, targets;
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < T; ++t) {
        inputs.push_back(tokens[b * (T + 1) + t]);
        targets.push_back(tokens[b * (T + 1) + t + 1]);
      }
    QwenModelOptions opts;
    opts.model_dtype = dtype == "bf16" ? DType::BF16 : DType::FP32;
    opts.batch_size = B;
    opts.seq_len = T;
    opts.grad_accumulation = 1;
    std::filesystem::create_directories(out_dir);
    if (opts.model_dtype == DType::FP32) return run<float>(cfg, opts, model_dir, inputs, targets, steps, adam, out_dir);
    return run<nv_bfloat16>(cfg, opts, model_dir, inputs, targets, steps, adam, out_dir);
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
