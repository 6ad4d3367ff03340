// Learning-rate schedule: linear warmup, then a cosine or linear decay to a fraction of the base
// rate, then an optional 1-sqrt cooldown towards zero (https://arxiv.org/abs/2405.18392).
//
// With base rate L, warmup W, total steps S, final fraction f, cooldown K and E = S - K (the step
// where the cooldown begins), the rate used by optimizer step s (0-based) is
//
//   warmup   0 <= s < W :  lr(s) = L * (s + 1) / W          (never 0 on the first step; L at s = W-1)
//   decay    W <= s <= E:  p = (s - W) / (E - W)            (p = 1 when E == W)
//                          cosine: lr(s) = L * (f + (1 - f) * 0.5 * (1 + cos(pi * p)))
//                          linear: lr(s) = L * (1 - (1 - f) * p)
//                          wsd:    lr(s) = L                (constant; f is not used)
//   cooldown E <  s <= S:  lr(s) = lr(E) * (1 - sqrt((s - E) / K))
//
// So the decay reaches L*f at step E (= S when K = 0, one past the last step S-1), and the cooldown
// reaches 0 at step S; the last step S-1 runs at lr(E) * (1 - sqrt((K-1)/K)), close to 0. This
// matches the seed tool, so runs resumed from its checkpoints continue the same curve. Steps past S
// return lr(S).
#pragma once
#include <optional>
#include <string_view>

namespace llmq {

enum class LrScheduleType { Cosine, Linear, Wsd };

// Case-insensitive: "cosine", "linear", "wsd" (warmup-stable-decay, the seed tool's third choice).
std::optional<LrScheduleType> parse_lr_schedule_type(std::string_view name);
std::string_view lr_schedule_name(LrScheduleType type);  // "cosine", "linear", "wsd"

class LrSchedule {
 public:
  // Throws llmq::Error unless base_lr >= 0, total_steps >= 1, warmup >= 0, cooldown >= 0,
  // warmup + cooldown <= total_steps and final_fraction in [0, 1].
  LrSchedule(double base_lr, int warmup_steps, int total_steps, double final_fraction,
             LrScheduleType type = LrScheduleType::Cosine, int cooldown_steps = 0);

  double lr(int step) const;  // step >= 0, else throws llmq::Error

  double base_lr() const { return base_lr_; }
  int total_steps() const { return total_steps_; }

 private:
  double decay_lr(int step) const;  // the warmup/decay curve without the cooldown factor

  double base_lr_;
  int warmup_;
  int total_steps_;
  double final_fraction_;
  LrScheduleType type_;
  int cooldown_;
};

}  // namespace llmq
