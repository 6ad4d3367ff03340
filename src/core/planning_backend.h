// A MemoryBackend that hands out addresses without memory behind them, for sizing a configuration
// before running it (--auto-fit): an Allocator over it records every allocation, category and peak
// exactly as a real run would, while nothing may read or write the returned pointers.
#pragma once
#include <memory>

#include "core/allocator.h"

namespace llmq {

// device_total_bytes: what the backend reports as the device size (the planned run's GPU).
std::unique_ptr<MemoryBackend> make_planning_backend(std::size_t device_total_bytes);

}  // namespace llmq
