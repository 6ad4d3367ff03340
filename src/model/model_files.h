// Finds a model's files on disk from what the user passed to --model: a local directory, or a
// Hugging Face name ("Org/Name") looked up in the local HF hub cache (no downloads).
//
// Cache folder: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub. A model lives in
// <cache>/models--Org--Name/snapshots/<revision>/; the revision named in refs/main is preferred,
// else the most recently modified snapshot.
#pragma once
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace llmq {

struct ModelFiles {
  std::filesystem::path dir;                          // the directory the files were found in (empty if none)
  std::optional<std::filesystem::path> config_json;   // config.json
  std::optional<std::filesystem::path> weights;       // model.safetensors, else model.safetensors.index.json
  std::optional<std::filesystem::path> tokenizer_json;

  bool found() const { return config_json.has_value(); }
  bool sharded() const { return weights && weights->filename() == "model.safetensors.index.json"; }
};

// Never throws for a missing model: returns ModelFiles without config_json (the caller may fall
// back to a preset with --from-scratch, or report model_not_found_message()).
ModelFiles resolve_model(std::string_view name_or_path);

// The HF hub cache folder from the environment (see the head comment).
std::filesystem::path hf_hub_cache_dir();

// Where resolve_model() looked for `name_or_path`, in order.
std::vector<std::filesystem::path> model_search_locations(std::string_view name_or_path);

// A user-facing error listing the places searched and how to get the model (download it, or train
// from scratch with a preset).
std::string model_not_found_message(std::string_view name_or_path);

}  // namespace llmq
