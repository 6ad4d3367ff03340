// The training loop: data -> Model::forward_backward x grad_accumulation -> Model::optimizer_step,
// with evaluation, checkpoints, logging and the final export. Knows the model only through the
// Model interface; the concrete model comes from the factory train.cpp passes in.
#include "training/trainer.h"

#include <cuda_profiler_api.h>
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <vector>

#include "core/allocator.h"
#include "core/gpu_info.h"
#include "core/sol.h"
#include "training/checkpoint.h"
#include "training/data_loader.h"
#include "training/logger.h"
#include "training/lr_schedule.h"

namespace llmq {

namespace {
using Clock = std::chrono::steady_clock;

// The existing files a path or glob pattern names (none when it names nothing).
std::vector<std::string> existing_token_files(const std::string& pattern) {
  std::vector<std::string> found;
  try {
    for (const std::string& f : resolve_token_files({pattern}))
      if (std::filesystem::exists(f)) found.push_back(f);
  } catch (const Error&) {  // a pattern that matches nothing
  }
  return found;
}

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

struct Batch {
  std::vector<std::int32_t> inputs, targets;
  explicit Batch(int n) : inputs(n), targets(n) {}
};

class Trainer {
 public:
  Trainer(const TrainOptions& opts, const ModelFactory& make_model);
  int run();

 private:
  void print_dataset() const;
  void resume();
  void train_step(int step);
  float evaluate(int step, int max_batches);
  void log_gpu_utilization(int step);
  void save_checkpoint(int step);
  int total_steps() const;

  const TrainOptions& opts_;
  Console console_{0};
  GpuInfo gpu_;
  DataLoader train_;
  std::optional<DataLoader> eval_;
  std::unique_ptr<Model> model_;
  TrainingLogger logger_;
  Batch batch_;
  int start_step_ = 0;
  float last_train_loss_ = NAN;
  std::optional<double> peak_flops_;
  const LrSchedule* lr_ = nullptr;  // set by run()
};

std::optional<DataLoader> open_eval_loader(const TrainOptions& opts) {
  if (opts.eval_file.empty()) return std::nullopt;
  // Without periodic evaluation a missing eval file only means: no final evaluation either.
  if (opts.eval_every_n_steps == 0 && existing_token_files(opts.eval_file).empty()) return std::nullopt;
  return DataLoader(opts.eval_file, opts.batch_size, opts.seq_len, 0, 1, opts.eval_seed, /*shuffle=*/false);
}

Trainer::Trainer(const TrainOptions& opts, const ModelFactory& make_model)
    : opts_(opts),
      gpu_(query_gpu(0)),
      train_(opts.train_file, opts.batch_size, opts.seq_len, 0, 1, opts.train_seed, /*shuffle=*/true),
      eval_(open_eval_loader(opts)),
      model_(make_model(opts)),
      logger_(opts.log_file, 0, opts.continue_from.has_value()),
      batch_(opts.batch_size * opts.seq_len) {
  console_.print("[System]\n  {}", describe(gpu_));
  train_.check_vocab(model_->vocab_size());
  if (eval_) eval_->check_vocab(model_->vocab_size());
  print_dataset();
  console_.print("{}", model_->allocator().state_report());
  logger_.log_options(options_to_json(opts));
  peak_flops_ = peak_flops(gpu_.name, opts.matmul_dtype);
}

void Trainer::print_dataset() const {
  std::string text = fmt::format("[Dataset]\n  train: {} tokens in {} file(s), {} steps per epoch\n",
                                 train_.total_tokens(), train_.files().size(),
                                 train_.steps_per_epoch() / opts_.grad_accumulation);
  if (eval_) text += fmt::format("  eval:  {} tokens in {} file(s)\n", eval_->total_tokens(), eval_->files().size());
  console_.print("{}", text);
}

int Trainer::total_steps() const {
  if (opts_.steps > 0) return opts_.steps;
  const std::uint64_t per_epoch = train_.steps_per_epoch() / opts_.grad_accumulation;
  LLMQ_REQUIRE(per_epoch > 0, "the training data holds less than one optimizer step of {} x {} x {} tokens: "
               "lower --grad-accumulation or --batch-size, or pass --steps", opts_.grad_accumulation,
               opts_.batch_size, opts_.seq_len);
  return static_cast<int>(per_epoch * opts_.epochs);
}

void Trainer::resume() {
  const std::filesystem::path dir = resolve_checkpoint(*opts_.continue_from, opts_.checkpoint_dir);
  nlohmann::json state = read_trainer_state(dir);
  model_->load_checkpoint(dir);
  start_step_ = state.at("step").get<int>();
  if (!opts_.new_data) train_.restore(state.at("train_loader").get<LoaderState>());
  console_.print("Resuming from {} at step {}{}", dir.string(), start_step_,
                 opts_.new_data ? " (new data: the data loader starts over)" : "");
}

void Trainer::train_step(int step) {
  const auto start = Clock::now();
  for (int micro = 0; micro < opts_.grad_accumulation; ++micro) {
    train_.next_batch(batch_.inputs.data(), batch_.targets.data());
    model_->forward_backward(batch_.inputs.data(), batch_.targets.data(), micro);
  }
  AdamWSettings adam;
  adam.learning_rate = static_cast<float>(lr_->lr(step));
  adam.beta1 = static_cast<float>(opts_.beta1);
  adam.beta2 = static_cast<float>(opts_.beta2);
  adam.epsilon = static_cast<float>(opts_.adam_epsilon);
  adam.weight_decay = static_cast<float>(opts_.weight_decay);
  adam.grad_clip = static_cast<float>(opts_.grad_clip);
  StepResult result = model_->optimizer_step(adam, step + 1);
  const double ms = ms_since(start);
  const std::int64_t tokens = static_cast<std::int64_t>(opts_.batch_size) * opts_.seq_len * opts_.grad_accumulation;
  const double tps = tokens / (ms / 1000.0);
  std::optional<double> sol;
  if (peak_flops_) sol = sol_fraction(tps, model_->training_flops_per_token(), *peak_flops_);
  last_train_loss_ = result.loss;
  console_.print(format_train_line(step, train_.epoch_progress(), ms, result.grad_norm, result.loss, tps, sol));
  TrainRecord rec;
  rec.step = step;
  rec.epoch = static_cast<double>(train_.epoch()) + train_.epoch_progress();
  rec.progress = train_.epoch_progress();
  rec.lr = adam.learning_rate;
  rec.loss = result.loss;
  rec.norm = result.grad_norm;
  rec.time_ms = ms;
  rec.tokens = tokens;
  rec.tps = tps;
  rec.sol = sol;
  logger_.log_train(rec);
  if (opts_.log_gpu_util > 0 && step % opts_.log_gpu_util == 0) log_gpu_utilization(step);
  LLMQ_REQUIRE(std::isfinite(result.loss), "step {}: the loss is {} (diverged): lower --learning-rate or raise "
               "--warmup; resume from the last checkpoint with --continue", step, result.loss);
}

void Trainer::log_gpu_utilization(int step) {
  const auto u = read_gpu_utilization(0);
  if (!u) return;  // no NVML (e.g. no driver library): nothing to log
  logger_.log_gpu({{"step", step}, {"gpu_util", u->gpu_util_percent}, {"mem_util", u->mem_util_percent},
                   {"temperature", u->temperature_c}, {"power_w", u->power_w}, {"sm_clock_mhz", u->sm_clock_mhz}});
}

float Trainer::evaluate(int step, int max_batches) {
  const auto start = Clock::now();
  eval_->reset();
  double sum = 0;
  int batches = 0;
  while ((max_batches <= 0 || batches < max_batches) && eval_->next_batch(batch_.inputs.data(), batch_.targets.data())) {
    sum += model_->evaluate(batch_.inputs.data(), batch_.targets.data());
    ++batches;
  }
  const double ms = ms_since(start);
  const float loss = batches ? static_cast<float>(sum / batches) : NAN;
  const std::int64_t tokens = static_cast<std::int64_t>(batches) * opts_.batch_size * opts_.seq_len;
  const double tps = tokens / (ms / 1000.0);
  console_.print(format_eval_line(step, train_.epoch_progress(), ms, loss, last_train_loss_, tps));
  EvalRecord rec;
  rec.step = step;
  rec.epoch = static_cast<double>(train_.epoch()) + train_.epoch_progress();
  rec.progress = train_.epoch_progress();
  rec.loss = loss;
  rec.train_loss = last_train_loss_;
  rec.time_ms = ms;
  rec.tokens = tokens;
  rec.tps = tps;
  logger_.log_eval(rec);
  return loss;
}

void Trainer::save_checkpoint(int step) {
  nlohmann::json state = {{"step", step}, {"train_loader", train_.state()}, {"name", opts_.name}};
  write_checkpoint(opts_.checkpoint_dir, step, state, [&](const std::filesystem::path& dir) { model_->save_checkpoint(dir); });
  prune_checkpoints(opts_.checkpoint_dir, opts_.ckpt_keep_n, opts_.ckpt_major, opts_.ckpt_interval);
}

int Trainer::run() {
  if (opts_.continue_from) resume();
  const int steps = total_steps();
  LrSchedule schedule(opts_.learning_rate, opts_.warmup, steps, opts_.final_lr_fraction, opts_.lr_schedule,
                      opts_.cooldown);
  lr_ = &schedule;
  for (int step = start_step_; step < steps; ++step) {
    // The first step (plans, graphs, matmul autotuning) stays outside a profiler started with its
    // collection off (ncu --profile-from-start off, nsys --capture-range=cudaProfilerApi).
    if (step == start_step_ + 1) LLMQ_CUDA_CHECK(cudaProfilerStart());
    train_step(step);
    const int done = step + 1;
    if (eval_ && opts_.eval_every_n_steps > 0 && done % opts_.eval_every_n_steps == 0 && done < steps)
      evaluate(step, opts_.eval_num_steps);
    if (opts_.ckpt_interval > 0 && done % opts_.ckpt_interval == 0 && done < steps) save_checkpoint(done);
  }
  if (steps > start_step_ + 1) LLMQ_CUDA_CHECK(cudaProfilerStop());
  if (eval_) evaluate(steps, /*max_batches=*/0);  // the final evaluation uses the whole eval set
  if (opts_.save_training_state && steps > start_step_) save_checkpoint(steps);
  model_->export_model(opts_.out_dir);
  console_.print("Saved the model to {}/model.safetensors (+ config.json)", opts_.out_dir);
  return 0;
}
}  // namespace

int run_training(const TrainOptions& opts, const ModelFactory& make_model) {
  int devices = cuda_device_count();
  LLMQ_REQUIRE(devices > 0, "no CUDA GPU found: llmq needs an NVIDIA GPU with a working driver (check nvidia-smi)");
  LLMQ_CUDA_CHECK(cudaSetDevice(0));
  Trainer trainer(opts, make_model);
  return trainer.run();
}

}  // namespace llmq
