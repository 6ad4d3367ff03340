// Console line formats, the JSON-lines log (records, flushing, folders, read_log) and the rank-0 console.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/errors.h"
#include "training/logger.h"

namespace llmq {
namespace {

namespace fs = std::filesystem;

fs::path fresh_dir(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("llmq_test_logger_" + name);
  fs::remove_all(dir);
  return dir;
}

TEST(LoggerFormat, TrainLineMatchesTheSeedLayout) {
  EXPECT_EQ(format_train_line(0, 0.199, 1869, 4.315545, 3.282568, 35064, 0.429),
            "[T] step     0 [ 19.9%] | time:  1869 ms | norm   4.315545 | loss   3.282568 | tps 35064 | sol 42.9%");
  EXPECT_EQ(format_train_line(12345, 1.0, 7, 0.5, 10.25, 148000, std::nullopt),
            "[T] step 12345 [100.0%] | time:     7 ms | norm   0.500000 | loss  10.250000 | tps  148k | sol n/a");
}

TEST(LoggerFormat, EvalLineMatchesTheSeedLayout) {
  EXPECT_EQ(format_eval_line(4, 0.0, 165, 2.945187, 3.295834, 148000),
            "[V] step     4 [  0.0%] | time:   165 ms | eval   2.945187 | train  3.295834 | tps  148k");
  // The value columns of [T] and [V] lines line up.
  const std::string t = format_train_line(4, 0.0, 165, 1.0, 3.0, 148000, std::nullopt);
  const std::string v = format_eval_line(4, 0.0, 165, 2.0, 3.0, 148000);
  EXPECT_EQ(t.find("| loss"), v.find("| train"));
  EXPECT_EQ(t.find("| norm"), v.find("| eval"));
}

TEST(LoggerFormat, TokensPerSecondStaysFiveCharactersWide) {
  EXPECT_EQ(format_tokens_per_second(0), "    0");
  EXPECT_EQ(format_tokens_per_second(99999), "99999");
  EXPECT_EQ(format_tokens_per_second(100000), " 100k");
  EXPECT_EQ(format_tokens_per_second(1234567), "1235k");
  EXPECT_EQ(format_tokens_per_second(25e6), "  25M");
  EXPECT_EQ(format_tokens_per_second(-1), "  n/a");
  EXPECT_EQ(format_tokens_per_second(NAN), "  n/a");
}

TEST(TrainingLogger, WritesOneFlushedJsonObjectPerRecord) {
  const fs::path dir = fresh_dir("records");
  const std::string path = (dir / "nested" / "run.json").string();  // parent folders do not exist yet
  TrainingLogger log(path, /*rank=*/0);
  log.log_options({{"batch-size", 4}, {"name", "demo"}});
  log.log_gpu({{"name", "H100"}, {"memory", 80}});
  log.log_train({.step = 3, .epoch = 0.5, .progress = 0.25, .lr = 1e-4, .loss = 3.25, .norm = 1.5, .time_ms = 120,
                 .tokens = 16384, .tps = 136533.3, .sol = 0.43});
  // Flushed per record: readable while the logger is still open.
  auto records = read_log(path);
  ASSERT_EQ(records.size(), 3u);
  log.log_train({.step = 4, .sol = std::nullopt});
  log.log_eval({.step = 4, .epoch = 0.6, .progress = 0.3, .loss = 2.9, .train_loss = 3.2, .time_ms = 165,
                .tokens = 8192, .tps = 148000});
  log.log_message(4, "saving checkpoint");
  records = read_log(path);
  ASSERT_EQ(records.size(), 6u);

  EXPECT_EQ(records[0]["kind"], "options");
  EXPECT_EQ(records[0]["batch-size"], 4);
  EXPECT_EQ(records[0]["name"], "demo");
  EXPECT_EQ(records[1]["kind"], "gpu");
  EXPECT_EQ(records[1]["name"], "H100");
  const auto& train = records[2];
  EXPECT_EQ(train["kind"], "train");
  EXPECT_EQ(train["step"], 3);
  EXPECT_DOUBLE_EQ(train["epoch"].get<double>(), 0.5);
  EXPECT_DOUBLE_EQ(train["progress"].get<double>(), 0.25);
  EXPECT_DOUBLE_EQ(train["lr"].get<double>(), 1e-4);
  EXPECT_DOUBLE_EQ(train["loss"].get<double>(), 3.25);
  EXPECT_DOUBLE_EQ(train["norm"].get<double>(), 1.5);
  EXPECT_DOUBLE_EQ(train["time_ms"].get<double>(), 120);
  EXPECT_EQ(train["tokens"], 16384);
  EXPECT_DOUBLE_EQ(train["tps"].get<double>(), 136533.3);
  EXPECT_DOUBLE_EQ(train["sol"].get<double>(), 0.43);
  EXPECT_TRUE(records[3]["sol"].is_null());
  const auto& eval = records[4];
  EXPECT_EQ(eval["kind"], "eval");
  EXPECT_DOUBLE_EQ(eval["loss"].get<double>(), 2.9);
  EXPECT_DOUBLE_EQ(eval["train_loss"].get<double>(), 3.2);
  EXPECT_EQ(eval["tokens"], 8192);
  EXPECT_EQ(records[5]["kind"], "message");
  EXPECT_EQ(records[5]["text"], "saving checkpoint");

  // One line per record.
  std::ifstream in(path);
  int lines = 0;
  for (std::string line; std::getline(in, line);) ++lines;
  EXPECT_EQ(lines, 6);
  fs::remove_all(dir);
}

TEST(TrainingLogger, NewRunTruncatesResumedRunAppends) {
  const fs::path dir = fresh_dir("append");
  const std::string path = (dir / "run.json").string();
  {
    TrainingLogger log(path, 0);
    log.log_message(0, "first run");
  }
  {
    TrainingLogger log(path, 0, /*append=*/true);
    log.log_message(5, "resumed");
  }
  auto records = read_log(path);
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[0]["text"], "first run");
  EXPECT_EQ(records[1]["step"], 5);
  {
    TrainingLogger log(path, 0);
    log.log_message(0, "fresh");
  }
  records = read_log(path);
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0]["text"], "fresh");
  fs::remove_all(dir);
}

TEST(TrainingLogger, OnlyRankZeroWrites) {
  const fs::path dir = fresh_dir("rank");
  const std::string path = (dir / "run.json").string();
  TrainingLogger log(path, /*rank=*/1);
  EXPECT_FALSE(log.enabled());
  log.log_train({.step = 1});
  EXPECT_FALSE(fs::exists(path));
}

TEST(TrainingLogger, NonFiniteLossIsLoggedAsNull) {
  const fs::path dir = fresh_dir("nan");
  const std::string path = (dir / "run.json").string();
  {
    TrainingLogger log(path, 0);
    log.log_train({.step = 1, .loss = NAN, .norm = INFINITY});
  }
  const auto records = read_log(path);
  ASSERT_EQ(records.size(), 1u);
  EXPECT_TRUE(records[0]["loss"].is_null());
  EXPECT_TRUE(records[0]["norm"].is_null());
  fs::remove_all(dir);
}

TEST(TrainingLogger, BadPathsAndBrokenLogsAreReported) {
  const fs::path dir = fresh_dir("bad");
  fs::create_directories(dir);
  const fs::path blocker = dir / "file";
  std::ofstream(blocker) << "x";
  EXPECT_THROW(TrainingLogger((blocker / "run.json").string(), 0), Error);  // parent is a file
  EXPECT_THROW(read_log((dir / "missing.json").string()), Error);

  const std::string broken = (dir / "broken.json").string();
  std::ofstream(broken) << "{\"kind\":\"train\",\"step\":1}\n{\"kind\":\"tr";
  try {
    read_log(broken);
    ADD_FAILURE() << "truncated line accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("line 2"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

std::string console_output(int rank) {
  std::FILE* f = std::tmpfile();
  Console console(rank, f);
  console.print("plain line");
  console.print("step {} loss {:.2f}", 7, 1.234);
  console.print("block\nof lines\n");  // already ends with a newline: no blank line added
  std::rewind(f);
  std::string out;
  for (int c; (c = std::fgetc(f)) != EOF;) out += static_cast<char>(c);
  std::fclose(f);
  return out;
}

TEST(Console, PrintsOnlyOnRankZero) {
  EXPECT_EQ(console_output(0), "plain line\nstep 7 loss 1.23\nblock\nof lines\n");
  EXPECT_EQ(console_output(1), "");
  EXPECT_EQ(console_output(3), "");
}

}  // namespace
}  // namespace llmq
