#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/errors.h"
#include "training/checkpoint.h"

using namespace llmq;
namespace fs = std::filesystem;

namespace {
fs::path fresh_dir(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / ("llmq_ckpt_test_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

void save(const fs::path& dir, int step) {
  write_checkpoint(dir, step, {{"step", step}}, [&](const fs::path& tmp) {
    std::ofstream(tmp / "model_state.safetensors") << "weights of step " << step;
  });
}
}  // namespace

TEST(Checkpoint, WritesCompleteDirectoryAndNoTemporaries) {
  const fs::path dir = fresh_dir("write");
  save(dir, 10);
  const fs::path ckpt = checkpoint_path(dir, 10);
  EXPECT_EQ(ckpt.filename(), "step-00000010");
  EXPECT_TRUE(fs::exists(ckpt / "model_state.safetensors"));
  EXPECT_EQ(read_trainer_state(ckpt).at("step"), 10);
  for (const auto& e : fs::directory_iterator(dir)) EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos);
}

TEST(Checkpoint, LatestIgnoresIncompleteDirectories) {
  const fs::path dir = fresh_dir("latest");
  save(dir, 10);
  save(dir, 20);
  fs::create_directories(dir / ".step-00000030.tmp");  // a save that crashed
  fs::create_directories(checkpoint_path(dir, 40));    // no trainer.json: incomplete
  EXPECT_EQ(latest_checkpoint(dir), checkpoint_path(dir, 20));
  EXPECT_FALSE(latest_checkpoint(dir / "missing").has_value());
}

TEST(Checkpoint, RewritingAStepReplacesIt) {
  const fs::path dir = fresh_dir("rewrite");
  save(dir, 10);
  write_checkpoint(dir, 10, {{"step", 10}, {"second", true}}, [](const fs::path&) {});
  EXPECT_TRUE(read_trainer_state(checkpoint_path(dir, 10)).contains("second"));
}

TEST(Checkpoint, PruneKeepsNewestAndMajor) {
  const fs::path dir = fresh_dir("prune");
  for (int step = 100; step <= 500; step += 100) save(dir, step);
  prune_checkpoints(dir, /*keep_n=*/2, /*major_every=*/2, /*interval=*/100);
  EXPECT_FALSE(fs::exists(checkpoint_path(dir, 100)));
  EXPECT_TRUE(fs::exists(checkpoint_path(dir, 200)));  // major: (200/100) % 2 == 0
  EXPECT_FALSE(fs::exists(checkpoint_path(dir, 300)));
  EXPECT_TRUE(fs::exists(checkpoint_path(dir, 400)));
  EXPECT_TRUE(fs::exists(checkpoint_path(dir, 500)));
  prune_checkpoints(dir, -1, 0, 100);  // keep all: nothing removed
  EXPECT_TRUE(fs::exists(checkpoint_path(dir, 200)));
}

TEST(Checkpoint, ResolvesWhatContinueNames) {
  const fs::path dir = fresh_dir("resolve");
  save(dir, 10);
  save(dir, 20);
  EXPECT_EQ(resolve_checkpoint("", dir), checkpoint_path(dir, 20));
  EXPECT_EQ(resolve_checkpoint("10", dir), checkpoint_path(dir, 10));
  EXPECT_EQ(resolve_checkpoint(checkpoint_path(dir, 10).string(), dir), checkpoint_path(dir, 10));
  EXPECT_EQ(resolve_checkpoint(dir.string(), "elsewhere"), checkpoint_path(dir, 20));
  EXPECT_THROW(resolve_checkpoint("30", dir), Error);
  EXPECT_THROW(resolve_checkpoint("", dir / "missing"), Error);
}

TEST(Checkpoint, BrokenTrainerStateIsReported) {
  const fs::path dir = fresh_dir("broken");
  fs::create_directories(dir / "step-00000010");
  std::ofstream(dir / "step-00000010" / "trainer.json") << "{ not json";
  try {
    read_trainer_state(dir / "step-00000010");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("step-00000010"), std::string::npos);
  }
  EXPECT_THROW(read_trainer_state(dir / "nothing"), Error);
}
