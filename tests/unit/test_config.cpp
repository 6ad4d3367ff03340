// ModelConfig (config.json parsing / writing, presets, derived counts) and model file resolution.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/errors.h"
#include "model/config.h"
#include "model/model_files.h"

using namespace llmq;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// The message of the llmq::Error `f` throws, or "<no error>".
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// Qwen2.5-0.5B's config.json as transformers 4 writes it.
json qwen05_json() {
  return json::parse(R"({
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
    "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 24,
    "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": true,
    "torch_dtype": "bfloat16", "use_sliding_window": false, "vocab_size": 151936})");
}

// A tiny config whose counts are easy to do by hand: C=8, D=16, L=2, Hq=2, Hkv=1, Hs=4, V=10.
ModelConfig tiny_config() {
  ModelConfig c;
  c.name = "tiny";
  c.hidden_size = 8;
  c.intermediate_size = 16;
  c.num_layers = 2;
  c.num_query_heads = 2;
  c.num_kv_heads = 1;
  c.head_size = 4;
  c.vocab_size = 10;
  c.tie_word_embeddings = false;
  c.qkv_bias = true;
  return c;
}

}  // namespace

// ---- derived counts ----

TEST(ModelConfigCounts, MatchPublishedQwenTotals) {
  EXPECT_EQ(find_preset("Qwen2.5-0.5B")->parameter_count(), 494032768);
  EXPECT_EQ(find_preset("Qwen2.5-1.5B")->parameter_count(), 1543714304);
  EXPECT_EQ(find_preset("Qwen2.5-7B")->parameter_count(), 7615616512);
}

TEST(ModelConfigCounts, TinyConfigByHand) {
  ModelConfig c = tiny_config();
  // Per layer: q 8x8, k 8x4, v 8x4 (=128), o 8x8 (=64), gate/up/down 3x8x16 (=384): 576 matmul weights.
  // Matmul: 2 * 576 + LM head 10 * 8 = 1232.
  EXPECT_EQ(c.matmul_parameter_count(), 1232);
  // Parameters: embedding 80 + 2 * (576 + qkv bias 16 + two norms 16) + final norm 8 + untied head 80.
  EXPECT_EQ(c.parameter_count(), 1384);
  // FLOPs at T = 16: 6 * 1232 + 6 * L(2) * Hq(2) * Hs(4) * T(16) = 7392 + 1536.
  EXPECT_EQ(c.training_flops_per_token(16), 8928);

  c.tie_word_embeddings = true;  // tied: the head is still a matmul, but not a separate parameter
  EXPECT_EQ(c.matmul_parameter_count(), 1232);
  EXPECT_EQ(c.parameter_count(), 1304);

  c.qkv_bias = false;
  c.qk_norm = true;  // Qwen3: two Hs-sized norm weights per layer instead of the biases
  EXPECT_EQ(c.parameter_count(), 1304 - 2 * 16 + 2 * 8);
  EXPECT_THROW(c.training_flops_per_token(0), Error);
}

TEST(ModelConfigCounts, FlopsGrowLinearlyWithSequence) {
  ModelConfig c = *find_preset("Qwen2.5-0.5B");
  std::int64_t f1 = c.training_flops_per_token(1024), f2 = c.training_flops_per_token(2048);
  EXPECT_EQ(f2 - f1, 6LL * 24 * 14 * 64 * 1024);
  EXPECT_EQ(f1, 6 * c.matmul_parameter_count() + 6LL * 24 * 14 * 64 * 1024);
}

// ---- presets ----

TEST(Presets, AcceptNameVariants) {
  for (const char* name : {"Qwen/Qwen2.5-0.5B", "Qwen2.5-0.5B", "qwen2.5-0.5b", "QWEN/QWEN2.5-0.5B"}) {
    auto c = find_preset(name);
    ASSERT_TRUE(c) << name;
    EXPECT_EQ(c->hidden_size, 896) << name;
  }
  auto instruct = find_preset("Qwen/Qwen2.5-7B-Instruct");
  ASSERT_TRUE(instruct);
  EXPECT_EQ(instruct->parameter_count(), find_preset("Qwen2.5-7B")->parameter_count());
  EXPECT_EQ(instruct->eos_token_id, 151645);
  EXPECT_EQ(find_preset("Qwen2.5-7B")->eos_token_id, 151643);
  EXPECT_FALSE(find_preset("Qwen2.5-70B"));
  EXPECT_FALSE(find_preset("Llama-3-8B"));
  EXPECT_FALSE(find_preset(""));
  EXPECT_FALSE(find_preset("Qwen/Qwen2.5-0.5B-Chat"));
}

TEST(Presets, AllAreValidQwen2Shapes) {
  auto names = preset_names();
  ASSERT_EQ(names.size(), 12u);
  for (const auto& name : names) {
    auto c = find_preset(name);
    ASSERT_TRUE(c) << name;
    EXPECT_NO_THROW(validate_config(*c, name));
    EXPECT_EQ(c->architecture, Architecture::Qwen2);
    EXPECT_TRUE(c->qkv_bias);
    EXPECT_EQ(c->head_size * c->num_query_heads, c->hidden_size);
    EXPECT_EQ(c->head_size, c->hidden_size == 896 ? 64 : 128) << name;
    EXPECT_DOUBLE_EQ(c->rope_theta, 1e6);
  }
  EXPECT_TRUE(find_preset("Qwen2.5-3B")->tie_word_embeddings);
  EXPECT_FALSE(find_preset("Qwen2.5-14B")->tie_word_embeddings);
  EXPECT_DOUBLE_EQ(find_preset("Qwen2.5-32B")->rms_norm_eps, 1e-5);
  EXPECT_EQ(find_preset("Qwen2.5-32B")->num_layers, 64);
}

// ---- config.json parsing ----

TEST(ConfigJson, ParsesQwen2) {
  ModelConfig c = config_from_json(qwen05_json(), "test.json");
  ModelConfig p = *find_preset("Qwen2.5-0.5B");
  EXPECT_EQ(c.architecture, Architecture::Qwen2);
  EXPECT_EQ(c.hidden_size, p.hidden_size);
  EXPECT_EQ(c.intermediate_size, p.intermediate_size);
  EXPECT_EQ(c.num_layers, p.num_layers);
  EXPECT_EQ(c.num_query_heads, 14);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.head_size, 64);
  EXPECT_EQ(c.vocab_size, 151936);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_FALSE(c.qk_norm);
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_EQ(c.max_position_embeddings, 32768);
  EXPECT_EQ(c.bos_token_id, 151643);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  EXPECT_EQ(c.parameter_count(), 494032768);
  EXPECT_EQ(c.name, "test.json");
}

TEST(ConfigJson, ReadsRopeThetaFromRopeParameters) {
  json j = qwen05_json();
  j.erase("rope_theta");
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 500000.0}};
  EXPECT_DOUBLE_EQ(config_from_json(j, "t5.json").rope_theta, 5e5);
  j.erase("rope_parameters");
  EXPECT_DOUBLE_EQ(config_from_json(j, "none.json").rope_theta, 10000.0);  // transformers' default
}

TEST(ConfigJson, RejectsRopeScaling) {
  json j = qwen05_json();
  j["rope_scaling"] = {{"type", "yarn"}, {"factor", 4.0}};
  EXPECT_TRUE(contains(error_of([&] { config_from_json(j, "y.json"); }), "rope_scaling type 'yarn' is not supported"));
  j.erase("rope_scaling");
  j["rope_parameters"] = {{"rope_type", "llama3"}, {"rope_theta", 5e5}};
  EXPECT_TRUE(contains(error_of([&] { config_from_json(j, "l.json"); }), "'llama3' is not supported"));
  j["rope_parameters"] = {{"rope_type", "default"}};
  j["rope_scaling"] = nullptr;  // null means none
  EXPECT_NO_THROW(config_from_json(j, "ok.json"));
}

TEST(ConfigJson, MissingKeyNamesKeyAndFile) {
  json j = qwen05_json();
  j.erase("intermediate_size");
  std::string msg = error_of([&] { config_from_json(j, "models/x/config.json"); });
  EXPECT_TRUE(contains(msg, "'intermediate_size'")) << msg;
  EXPECT_TRUE(contains(msg, "models/x/config.json")) << msg;
}

TEST(ConfigJson, RejectsBadSizes) {
  json j = qwen05_json();
  j["hidden_size"] = 0;
  EXPECT_TRUE(contains(error_of([&] { config_from_json(j, "a"); }), "hidden_size"));
  j = qwen05_json();
  j["num_hidden_layers"] = -3;
  EXPECT_TRUE(contains(error_of([&] { config_from_json(j, "a"); }), "num_hidden_layers"));
  j = qwen05_json();
  j["hidden_size"] = 900;  // not a multiple of 14 heads
  EXPECT_TRUE(contains(error_of([&] { config_from_json(j, "a"); }), "divisible by num_attention_heads"));
  j = qwen05_json();
  j["num_key_value_heads"] = 3;  // 14 query heads cannot be grouped over 3
  EXPECT_TRUE(contains(error_of([&] { config_from_json(j, "a"); }), "multiple of num_key_value_heads"));
  j = qwen05_json();
  j["vocab_size"] = "151936";
  EXPECT_TRUE(contains(error_of([&] { config_from_json(j, "a"); }), "'vocab_size' must be an integer"));
  EXPECT_THROW(config_from_json(json::array({1, 2}), "a"), Error);
}

TEST(ConfigJson, RejectsUnsupportedFeatures) {
  json j = qwen05_json();
  j["use_sliding_window"] = true;
  EXPECT_TRUE(contains(error_of([&] { config_from_json(j, "a"); }), "sliding-window attention is not supported"));
  j = qwen05_json();
  j["model_type"] = "mistral";
  EXPECT_TRUE(contains(error_of([&] { config_from_json(j, "a"); }), "model_type 'mistral' is not supported"));
  j = qwen05_json();
  j["hidden_act"] = "gelu";
  EXPECT_TRUE(contains(error_of([&] { config_from_json(j, "a"); }), "hidden_act 'gelu'"));
}

TEST(ConfigJson, ArchitecturesListIsTheFallback) {
  json j = qwen05_json();
  j.erase("model_type");
  EXPECT_EQ(config_from_json(j, "a").architecture, Architecture::Qwen2);
  j["architectures"] = {"LlamaForCausalLM"};
  EXPECT_EQ(config_from_json(j, "a").architecture, Architecture::Llama);
  j["architectures"] = {"GPT2LMHeadModel"};
  EXPECT_TRUE(contains(error_of([&] { config_from_json(j, "a"); }), "not supported"));
  j.erase("architectures");
  EXPECT_TRUE(contains(error_of([&] { config_from_json(j, "a"); }), "'model_type' is missing"));
}

TEST(ConfigJson, LlamaBiasFollowsAttentionBias) {
  json j = qwen05_json();
  j["model_type"] = "llama";
  j["eos_token_id"] = {128001, 128009};
  ModelConfig c = config_from_json(j, "llama.json");
  EXPECT_EQ(c.architecture, Architecture::Llama);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_EQ(c.eos_token_id, 128001);
  j["attention_bias"] = true;
  EXPECT_TRUE(config_from_json(j, "llama.json").qkv_bias);
  j["mlp_bias"] = true;
  EXPECT_TRUE(contains(error_of([&] { config_from_json(j, "a"); }), "mlp_bias"));
}

TEST(ConfigJson, Qwen3HeadDimAndQkNorm) {
  // Qwen3-0.6B's shapes: head_dim 128 although hidden_size / heads = 64.
  json j = {{"model_type", "qwen3"}, {"hidden_size", 1024}, {"intermediate_size", 3072},
            {"num_hidden_layers", 28}, {"num_attention_heads", 16}, {"num_key_value_heads", 8},
            {"head_dim", 128}, {"vocab_size", 151936}, {"tie_word_embeddings", true},
            {"attention_bias", false}, {"rope_theta", 1000000}, {"use_sliding_window", false}};
  ModelConfig c = config_from_json(j, "qwen3.json");
  EXPECT_EQ(c.architecture, Architecture::Qwen3);
  EXPECT_EQ(c.head_size, 128);
  EXPECT_EQ(c.q_channels(), 2048);
  EXPECT_EQ(c.qkv_channels(), 2048 + 2 * 1024);
  EXPECT_TRUE(c.qk_norm);
  EXPECT_FALSE(c.qkv_bias);
  // Embedding 151936*1024 + 28 layers * 15730944 + final norm 1024 (model card: 0.6B, 0.44B non-embedding).
  EXPECT_EQ(c.parameter_count(), 596049920);
  j["hidden_size"] = 1000;  // not a multiple of 16: fine with an explicit head_dim
  EXPECT_NO_THROW(config_from_json(j, "qwen3.json"));
}

TEST(ConfigJson, WritesWhatTransformers4And5Read) {
  ModelConfig p = *find_preset("Qwen2.5-1.5B");
  json j = to_hf_config_json(p);
  EXPECT_EQ(j["architectures"], json::array({"Qwen2ForCausalLM"}));
  EXPECT_EQ(j["model_type"], "qwen2");
  EXPECT_DOUBLE_EQ(j["rope_theta"].get<double>(), 1e6);
  EXPECT_EQ(j["rope_parameters"]["rope_type"], "default");
  EXPECT_DOUBLE_EQ(j["rope_parameters"]["rope_theta"].get<double>(), 1e6);
  EXPECT_EQ(j["torch_dtype"], "bfloat16");
  EXPECT_EQ(j["dtype"], "bfloat16");
  EXPECT_EQ(j["use_sliding_window"], false);
  EXPECT_EQ(j["hidden_act"], "silu");
  EXPECT_EQ(j["tie_word_embeddings"], true);
  EXPECT_EQ(j["eos_token_id"], 151643);
  EXPECT_EQ(j["num_key_value_heads"], 2);
  EXPECT_FALSE(j.contains("head_dim"));
  EXPECT_EQ(to_hf_config_json(p, DType::FP32)["torch_dtype"], "float32");
  EXPECT_THROW(to_hf_config_json(p, DType::E4M3), Error);

  ModelConfig back = config_from_json(j, "roundtrip");
  EXPECT_EQ(back.parameter_count(), p.parameter_count());
  EXPECT_EQ(back.max_position_embeddings, p.max_position_embeddings);
  EXPECT_DOUBLE_EQ(back.rms_norm_eps, p.rms_norm_eps);
  EXPECT_EQ(back.bos_token_id, p.bos_token_id);
}

TEST(ConfigJson, Qwen3RoundTripKeepsHeadDim) {
  ModelConfig c = tiny_config();
  c.architecture = Architecture::Qwen3;
  c.head_size = 8;  // Hq * Hs = 16 != C = 8
  c.qkv_bias = false;
  c.qk_norm = true;
  json j = to_hf_config_json(c);
  EXPECT_EQ(j["head_dim"], 8);
  ModelConfig back = config_from_json(j, "rt");
  EXPECT_EQ(back.head_size, 8);
  EXPECT_EQ(back.parameter_count(), c.parameter_count());
}

// ---- files on disk ----

class TempDir : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / ("llmq_test_" + std::to_string(getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    for (const char* var : {"HF_HOME", "HF_HUB_CACHE", "HOME"}) {
      const char* v = std::getenv(var);
      saved_.emplace_back(var, v ? std::optional<std::string>(v) : std::nullopt);
    }
    unsetenv("HF_HOME");
    unsetenv("HF_HUB_CACHE");
  }
  void TearDown() override {
    for (const auto& [var, value] : saved_) {
      if (value)
        setenv(var.c_str(), value->c_str(), 1);
      else
        unsetenv(var.c_str());
    }
    fs::remove_all(dir_);
  }
  static void write(const fs::path& p, const std::string& text) {
    fs::create_directories(p.parent_path());
    std::ofstream(p) << text;
  }
  // A snapshot folder with the given files, inside an HF cache rooted at `hub`.
  static fs::path snapshot(const fs::path& hub, const std::string& repo, const std::string& rev,
                           std::initializer_list<const char*> files) {
    fs::path s = hub / repo / "snapshots" / rev;
    fs::create_directories(s);
    for (const char* f : files) write(s / f, "{}");
    return s;
  }
  fs::path dir_;
  std::vector<std::pair<std::string, std::optional<std::string>>> saved_;
};

using ConfigFile = TempDir;

TEST_F(ConfigFile, LoadsFileOrDirectory) {
  write(dir_ / "m" / "config.json", qwen05_json().dump());
  EXPECT_EQ(load_config_json(dir_ / "m" / "config.json").hidden_size, 896);
  EXPECT_EQ(load_config_json(dir_ / "m").num_layers, 24);
}

TEST_F(ConfigFile, ReportsMissingAndInvalidFiles) {
  std::string msg = error_of([&] { load_config_json(dir_ / "nope.json"); });
  EXPECT_TRUE(contains(msg, "nope.json")) << msg;
  EXPECT_TRUE(contains(msg, "not found")) << msg;
  write(dir_ / "bad.json", "{\"hidden_size\": 896,");
  msg = error_of([&] { load_config_json(dir_ / "bad.json"); });
  EXPECT_TRUE(contains(msg, "invalid JSON")) << msg;
  EXPECT_TRUE(contains(msg, "bad.json")) << msg;
}

using ModelFilesTest = TempDir;

TEST_F(ModelFilesTest, PrefersRefsMain) {
  setenv("HF_HOME", dir_.c_str(), 1);
  const fs::path hub = dir_ / "hub";
  snapshot(hub, "models--Qwen--Qwen2.5-0.5B", "aaa111", {"config.json", "model.safetensors", "tokenizer.json"});
  fs::path newer = snapshot(hub, "models--Qwen--Qwen2.5-0.5B", "bbb222", {"config.json"});
  fs::last_write_time(newer, fs::file_time_type::clock::now() + std::chrono::hours(1));
  write(hub / "models--Qwen--Qwen2.5-0.5B" / "refs" / "main", "aaa111\n");

  ModelFiles f = resolve_model("Qwen/Qwen2.5-0.5B");
  ASSERT_TRUE(f.found());
  EXPECT_EQ(f.dir, hub / "models--Qwen--Qwen2.5-0.5B" / "snapshots" / "aaa111");
  EXPECT_EQ(*f.config_json, f.dir / "config.json");
  ASSERT_TRUE(f.weights);
  EXPECT_EQ(f.weights->filename(), "model.safetensors");
  EXPECT_FALSE(f.sharded());
  ASSERT_TRUE(f.tokenizer_json);
}

TEST_F(ModelFilesTest, FallsBackToNewestSnapshot) {
  setenv("HF_HOME", dir_.c_str(), 1);
  const fs::path hub = dir_ / "hub";
  fs::path old_rev = snapshot(hub, "models--Qwen--Qwen2.5-7B", "old", {"config.json"});
  fs::path new_rev = snapshot(hub, "models--Qwen--Qwen2.5-7B", "new", {"config.json"});
  auto now = fs::file_time_type::clock::now();
  fs::last_write_time(old_rev, now - std::chrono::hours(2));
  fs::last_write_time(new_rev, now - std::chrono::hours(1));
  EXPECT_EQ(resolve_model("Qwen/Qwen2.5-7B").dir.filename(), "new");
  // A refs/main naming a snapshot that is not there is ignored.
  write(hub / "models--Qwen--Qwen2.5-7B" / "refs" / "main", "gone");
  EXPECT_EQ(resolve_model("Qwen/Qwen2.5-7B").dir.filename(), "new");
}

TEST_F(ModelFilesTest, DetectsShardedWeights) {
  setenv("HF_HUB_CACHE", (dir_ / "cache").c_str(), 1);
  setenv("HF_HOME", (dir_ / "elsewhere").c_str(), 1);  // HF_HUB_CACHE takes precedence
  snapshot(dir_ / "cache", "models--Qwen--Qwen2.5-14B", "r1",
           {"config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors"});
  ModelFiles f = resolve_model("Qwen/Qwen2.5-14B");
  ASSERT_TRUE(f.found());
  ASSERT_TRUE(f.weights);
  EXPECT_EQ(f.weights->filename(), "model.safetensors.index.json");
  EXPECT_TRUE(f.sharded());
  EXPECT_FALSE(f.tokenizer_json);
}

TEST_F(ModelFilesTest, LocalDirectoryWins) {
  write(dir_ / "local" / "config.json", "{}");
  ModelFiles f = resolve_model((dir_ / "local").string());
  ASSERT_TRUE(f.found());
  EXPECT_EQ(f.dir, dir_ / "local");
  EXPECT_FALSE(f.weights);
}

TEST_F(ModelFilesTest, MissingModelExplainsWhereItLooked) {
  setenv("HF_HOME", dir_.c_str(), 1);
  ModelFiles f = resolve_model("Qwen/Qwen2.5-3B");
  EXPECT_FALSE(f.found());
  EXPECT_FALSE(f.weights);
  std::string msg = model_not_found_message("Qwen/Qwen2.5-3B");
  EXPECT_TRUE(contains(msg, (dir_ / "hub" / "models--Qwen--Qwen2.5-3B").string())) << msg;
  EXPECT_TRUE(contains(msg, "huggingface-cli download Qwen/Qwen2.5-3B")) << msg;
  EXPECT_TRUE(contains(msg, "--from-scratch")) << msg;

  EXPECT_FALSE(resolve_model((dir_ / "no" / "such" / "dir").string()).found());
  EXPECT_FALSE(resolve_model("").found());
  msg = model_not_found_message("my-model");
  EXPECT_TRUE(contains(msg, "Qwen/Qwen2.5-0.5B")) << msg;  // suggests a preset

  fs::create_directories(dir_ / "empty");
  EXPECT_FALSE(resolve_model((dir_ / "empty").string()).found());
  EXPECT_TRUE(contains(model_not_found_message((dir_ / "empty").string()), "holds no config.json"));
}

TEST_F(ModelFilesTest, CacheDirFromEnvironment) {
  setenv("HOME", "/home/someone", 1);
  EXPECT_EQ(hf_hub_cache_dir(), fs::path("/home/someone/.cache/huggingface/hub"));
  setenv("HF_HOME", "/data/hf", 1);
  EXPECT_EQ(hf_hub_cache_dir(), fs::path("/data/hf/hub"));
  setenv("HF_HUB_CACHE", "/fast/hub", 1);
  EXPECT_EQ(hf_hub_cache_dir(), fs::path("/fast/hub"));
}
