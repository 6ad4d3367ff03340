// Memory shrink hints: see memory_hints.h. Flag names must match src/training/options.cpp
// (test_allocator checks that every flag named here is in --help).
#include "model/memory_hints.h"

namespace llmq {

ShrinkHints memory_shrink_hints() {
  ShrinkHints hints;
  auto set = [&](MemCategory c, const char* text) { hints[static_cast<std::size_t>(c)] = text; };
  set(MemCategory::Weights, "--offload-master (block weights to pinned host memory)");
  set(MemCategory::Master, "--offload-master (master weights to pinned host memory)");
  set(MemCategory::Gradients, "--offload-gradients (block weight gradients to pinned host memory)");
  set(MemCategory::AdamM, "--offload-opt-m or --opt-m-dtype=bf16");
  set(MemCategory::AdamV, "--offload-opt-v or --opt-v-dtype=bf16");
  set(MemCategory::Activations,
      "--recompute-block (or lighter --recompute-*), --offload-residual, a smaller --batch-size with more "
      "--grad-accumulation, --lmhead-chunks=N");
  // With --offload-master the FP8 weights keep one copy and transpose it per use (fp8_linear.h).
  set(MemCategory::Quants,
      "--offload-quants (FP8 weights to pinned host memory), --offload-master (one FP8 copy per weight instead of "
      "two), --recompute-swiglu or --recompute-norm (no kept FP8 copy of what they recompute) or --matmul-dtype=bf16");
  return hints;
}

}  // namespace llmq
