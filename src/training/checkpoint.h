// Checkpoints: one directory per optimizer step, `<checkpoint-dir>/step-00000100/`, holding the
// model's state (Model::save_checkpoint) and `trainer.json` (step, data-loader position, options).
// A checkpoint is written into `.step-00000100.tmp` and renamed when complete, so a directory named
// step-* is always whole: a crash while saving never damages the previous checkpoint.
#pragma once
#include <filesystem>
#include <functional>
#include <optional>

#include <nlohmann/json.hpp>

namespace llmq {

std::filesystem::path checkpoint_path(const std::filesystem::path& checkpoint_dir, int step);

// Writes a checkpoint of `step`: `save_model(tmp_dir)` fills the temporary directory, then
// trainer.json is added and the directory renamed into place (replacing an older one of that step).
void write_checkpoint(const std::filesystem::path& checkpoint_dir, int step, const nlohmann::json& trainer_state,
                      const std::function<void(const std::filesystem::path&)>& save_model);

// The complete checkpoint with the highest step in `checkpoint_dir`, if any.
std::optional<std::filesystem::path> latest_checkpoint(const std::filesystem::path& checkpoint_dir);

// What --continue names: "" (the newest complete checkpoint in checkpoint_dir), a step number, a
// checkpoint directory (step-N/) or a folder of checkpoints (its newest). Throws when none exists.
std::filesystem::path resolve_checkpoint(const std::string& spec, const std::filesystem::path& checkpoint_dir);

// trainer.json of a checkpoint directory; throws naming the directory when it is missing or broken.
nlohmann::json read_trainer_state(const std::filesystem::path& checkpoint);

// Deletes old checkpoints so that the newest `keep_n` remain (keep_n < 0: keep all); every
// `major_every`-th checkpoint (by step / interval count) is kept regardless (major_every <= 0: none).
void prune_checkpoints(const std::filesystem::path& checkpoint_dir, int keep_n, int major_every, int interval);

}  // namespace llmq
