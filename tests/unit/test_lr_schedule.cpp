// LR schedule against the formulas in lr_schedule.h: warmup, cosine/linear/wsd decay, 1-sqrt cooldown.
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>

#include "core/errors.h"
#include "training/lr_schedule.h"

namespace llmq {
namespace {

constexpr double kTol = 1e-12;

TEST(LrSchedule, WarmupRisesLinearlyAndNeverStartsAtZero) {
  const LrSchedule s(1e-3, /*warmup=*/10, /*total=*/100, /*final=*/0.1, LrScheduleType::Cosine);
  EXPECT_NEAR(s.lr(0), 1e-4, kTol);  // (0 + 1) / 10
  EXPECT_NEAR(s.lr(4), 5e-4, kTol);
  EXPECT_NEAR(s.lr(9), 1e-3, kTol);   // warmup ends at the base rate
  EXPECT_NEAR(s.lr(10), 1e-3, kTol);  // decay starts at progress 0
  for (int step = 1; step < 10; ++step) EXPECT_GT(s.lr(step), s.lr(step - 1));
}

TEST(LrSchedule, CosineMatchesFormulaAndReachesFinalFraction) {
  const double base = 2e-4, f = 0.1;
  const LrSchedule s(base, 10, 110, f, LrScheduleType::Cosine);
  for (int step : {10, 35, 60, 85, 109}) {
    const double p = (step - 10) / 100.0;
    EXPECT_NEAR(s.lr(step), base * (f + (1 - f) * 0.5 * (1 + std::cos(std::numbers::pi * p))), kTol) << step;
  }
  EXPECT_NEAR(s.lr(60), base * (f + (1 - f) * 0.5), kTol);  // half way: mean of base and final
  EXPECT_NEAR(s.lr(110), base * f, kTol);                   // one past the last step
  EXPECT_NEAR(s.lr(109), base * f, 1e-3 * base);            // the last step is within 0.1% of it
  EXPECT_NEAR(s.lr(1000), base * f, kTol);                  // past the end: stays there
}

TEST(LrSchedule, DecayIsMonotonic) {
  for (auto type : {LrScheduleType::Cosine, LrScheduleType::Linear}) {
    const LrSchedule s(1.0, 5, 200, 0.0, type, 20);
    for (int step = 6; step <= 200; ++step) EXPECT_LE(s.lr(step), s.lr(step - 1)) << step;
  }
}

TEST(LrSchedule, NoWarmupStartsAtBase) {
  const LrSchedule s(3e-4, 0, 50, 0.5, LrScheduleType::Linear);
  EXPECT_NEAR(s.lr(0), 3e-4, kTol);
  EXPECT_NEAR(s.lr(25), 3e-4 * 0.75, kTol);
  EXPECT_NEAR(s.lr(50), 1.5e-4, kTol);
}

TEST(LrSchedule, LinearAndCosineShareEndsButDifferInBetween) {
  const LrSchedule cosine(1.0, 0, 100, 0.0, LrScheduleType::Cosine);
  const LrSchedule linear(1.0, 0, 100, 0.0, LrScheduleType::Linear);
  EXPECT_NEAR(cosine.lr(0), linear.lr(0), kTol);
  EXPECT_NEAR(cosine.lr(50), linear.lr(50), kTol);  // both 0.5 half way
  EXPECT_NEAR(cosine.lr(100), linear.lr(100), kTol);
  EXPECT_GT(cosine.lr(25), linear.lr(25));  // cosine stays high early ...
  EXPECT_LT(cosine.lr(75), linear.lr(75));  // ... and low late
  EXPECT_NEAR(linear.lr(25), 0.75, kTol);
  EXPECT_NEAR(cosine.lr(25), 0.5 * (1 + std::cos(std::numbers::pi / 4)), kTol);
}

TEST(LrSchedule, FinalFractionOneIsConstantAfterWarmup) {
  const LrSchedule s(1e-5, 3, 30, 1.0, LrScheduleType::Cosine);
  for (int step = 2; step <= 30; ++step) EXPECT_NEAR(s.lr(step), 1e-5, kTol) << step;
}

TEST(LrSchedule, CooldownAnnealsToZeroWithOneMinusSqrt) {
  const double base = 1e-3, f = 0.5;
  const int total = 100, cooldown = 20, start = total - cooldown;
  const LrSchedule s(base, 0, total, f, LrScheduleType::Cosine, cooldown);
  EXPECT_NEAR(s.lr(start), base * f, kTol);  // decay reaches the final fraction where the cooldown begins
  for (int step = start + 1; step <= total; ++step) {
    EXPECT_NEAR(s.lr(step), base * f * (1 - std::sqrt((step - start) / double(cooldown))), kTol) << step;
    EXPECT_LT(s.lr(step), s.lr(step - 1));
  }
  EXPECT_LT(s.lr(total - 1), 0.03 * base * f);  // the last step is close to zero
  EXPECT_NEAR(s.lr(total), 0.0, kTol);
}

TEST(LrSchedule, WsdIsConstantUntilCooldown) {
  const LrSchedule s(1e-4, 2, 20, 0.1, LrScheduleType::Wsd, 5);
  EXPECT_NEAR(s.lr(0), 5e-5, kTol);
  for (int step = 1; step <= 15; ++step) EXPECT_NEAR(s.lr(step), 1e-4, kTol) << step;
  EXPECT_NEAR(s.lr(16), 1e-4 * (1 - std::sqrt(0.2)), kTol);
}

TEST(LrSchedule, WarmupPlusCooldownFillingTheRunHasNoDecayPhase) {
  const LrSchedule s(1.0, 4, 10, 0.5, LrScheduleType::Linear, 6);
  EXPECT_NEAR(s.lr(3), 1.0, kTol);
  EXPECT_NEAR(s.lr(4), 0.5, kTol);  // the (empty) decay phase is complete: final fraction
  EXPECT_NEAR(s.lr(10), 0.0, kTol);
}

TEST(LrSchedule, InvalidArgumentsThrow) {
  EXPECT_THROW(LrSchedule(-1e-3, 0, 10, 0.1), Error);
  EXPECT_THROW(LrSchedule(NAN, 0, 10, 0.1), Error);
  EXPECT_THROW(LrSchedule(1e-3, 0, 0, 0.1), Error);
  EXPECT_THROW(LrSchedule(1e-3, -1, 10, 0.1), Error);
  EXPECT_THROW(LrSchedule(1e-3, 0, 10, 0.1, LrScheduleType::Cosine, -2), Error);
  EXPECT_THROW(LrSchedule(1e-3, 0, 10, 1.5), Error);
  EXPECT_THROW(LrSchedule(1e-3, 0, 10, -0.1), Error);
  try {
    LrSchedule(1e-3, 8, 10, 0.1, LrScheduleType::Cosine, 5);
    ADD_FAILURE() << "warmup + cooldown > steps accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--warmup 8 + --cooldown 5"), std::string::npos) << e.what();
  }
  const LrSchedule s(1e-3, 0, 10, 0.1);
  EXPECT_THROW(s.lr(-1), Error);
}

TEST(LrSchedule, TypeNamesParseCaseInsensitively) {
  EXPECT_EQ(parse_lr_schedule_type("cosine"), LrScheduleType::Cosine);
  EXPECT_EQ(parse_lr_schedule_type("Cosine"), LrScheduleType::Cosine);
  EXPECT_EQ(parse_lr_schedule_type("LINEAR"), LrScheduleType::Linear);
  EXPECT_EQ(parse_lr_schedule_type("WSD"), LrScheduleType::Wsd);
  EXPECT_FALSE(parse_lr_schedule_type("step").has_value());
  EXPECT_FALSE(parse_lr_schedule_type("").has_value());
  EXPECT_EQ(lr_schedule_name(LrScheduleType::Linear), "linear");
}

}  // namespace
}  // namespace llmq
