// Learning-rate schedule; the formulas are in lr_schedule.h.
#include "training/lr_schedule.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <numbers>
#include <string>

#include "core/errors.h"

namespace llmq {

std::optional<LrScheduleType> parse_lr_schedule_type(std::string_view name) {
  std::string lower(name);
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  if (lower == "cosine") return LrScheduleType::Cosine;
  if (lower == "linear") return LrScheduleType::Linear;
  if (lower == "wsd") return LrScheduleType::Wsd;
  return std::nullopt;
}

std::string_view lr_schedule_name(LrScheduleType type) {
  switch (type) {
    case LrScheduleType::Cosine: return "cosine";
    case LrScheduleType::Linear: return "linear";
    case LrScheduleType::Wsd: return "wsd";
  }
  return "?";
}

LrSchedule::LrSchedule(double base_lr, int warmup_steps, int total_steps, double final_fraction,
                       LrScheduleType type, int cooldown_steps)
    : base_lr_(base_lr), warmup_(warmup_steps), total_steps_(total_steps), final_fraction_(final_fraction),
      type_(type), cooldown_(cooldown_steps) {
  LLMQ_REQUIRE(std::isfinite(base_lr) && base_lr >= 0, "learning rate {} must be a finite number >= 0 (--lr)", base_lr);
  LLMQ_REQUIRE(total_steps >= 1, "LR schedule needs at least one step, got {} (--steps)", total_steps);
  LLMQ_REQUIRE(warmup_steps >= 0, "warmup steps must be >= 0, got {} (--warmup)", warmup_steps);
  LLMQ_REQUIRE(cooldown_steps >= 0, "cooldown steps must be >= 0, got {} (--cooldown)", cooldown_steps);
  LLMQ_REQUIRE(static_cast<long>(warmup_steps) + cooldown_steps <= total_steps,
               "--warmup {} + --cooldown {} exceed the {} training steps: shorten them or train longer",
               warmup_steps, cooldown_steps, total_steps);
  LLMQ_REQUIRE(final_fraction >= 0 && final_fraction <= 1,
               "final LR fraction must be in [0, 1], got {} (--final-lr-fraction)", final_fraction);
}

double LrSchedule::decay_lr(int step) const {
  if (step < warmup_) return base_lr_ * (step + 1) / warmup_;
  const int decay_end = total_steps_ - cooldown_;
  const double progress =
      decay_end > warmup_ ? std::min(1.0, double(step - warmup_) / double(decay_end - warmup_)) : 1.0;
  const double f = final_fraction_;
  switch (type_) {
    case LrScheduleType::Cosine: return base_lr_ * (f + (1 - f) * 0.5 * (1 + std::cos(std::numbers::pi * progress)));
    case LrScheduleType::Linear: return base_lr_ * (1 - (1 - f) * progress);
    case LrScheduleType::Wsd: return base_lr_;
  }
  return base_lr_;
}

double LrSchedule::lr(int step) const {
  LLMQ_REQUIRE(step >= 0, "learning rate asked for negative step {}", step);
  step = std::min(step, total_steps_);
  const int cooldown_start = total_steps_ - cooldown_;
  if (step <= cooldown_start) return decay_lr(step);
  const double progress = double(step - cooldown_start) / cooldown_;
  return decay_lr(cooldown_start) * (1 - std::sqrt(progress));
}

}  // namespace llmq
