// Which llmq flags shrink each memory category: the text an out-of-memory message shows next to
// the categories that take the most device memory (registered with Allocator::set_shrink_hints).
#pragma once
#include "core/allocator.h"

namespace llmq {

// One entry per MemCategory, "" for categories no flag shrinks (Workspace, Other).
ShrinkHints memory_shrink_hints();

}  // namespace llmq
