#!/usr/bin/env python3
"""PyTorch + transformers training-speed baseline for llmq's benchmark table (scripts/bench.py).

Trains a Qwen2ForCausalLM built from a config (random weights, nothing downloaded) the way a
PyTorch user typically would on one GPU: bf16 weights, SDPA attention, torch.compile(model),
loss from `labels=` (transformers shifts them), gradient accumulation, global-norm clipping at
1.0 (llmq clips by default too) and fused AdamW. Inputs are random token ids. AdamW keeps its
moments in the parameters' dtype (bf16), where llmq keeps them in fp32 by default.

Prints one JSON line on stdout:
  {"model", "batch", "accum", "seq_len", "steps", "warmup", "tokens_per_s" (median over the timed
   steps), "tokens_per_s_mean", "step_ms" (every step, warm-up included), "peak_mem_bytes",
   "peak_mem_gib" (torch.cuda.max_memory_allocated), "oom_retries", "compiled", "attn_implementation",
   "device", "torch", "transformers"}
or, when it cannot run, {"model", "error": "..."} and exit status 1. With --halve-on-oom (default)
an out-of-memory micro-batch is halved and the accumulation doubled (same tokens per step).

  python3 scripts/bench_pytorch.py --model Qwen2.5-0.5B --batch 32 --accum 1
Importable: run_benchmark(model, batch, accum, ...) returns the same dict.
"""

import argparse
import contextlib
import json
import statistics
import sys
import time


def qwen25_sizes(hidden, mlp, layers, heads, kv_heads, vocab, tied, max_positions):
    """The Qwen2Config sizes of one Qwen2.5 base model (rms eps 1e-6 for all of them)."""
    return dict(hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=kv_heads, vocab_size=vocab, tie_word_embeddings=tied, rms_norm_eps=1e-6,
                max_position_embeddings=max_positions)


# Qwen2.5 base-model hyperparameters, as in src/model/config.cpp's presets.
QWEN25_PRESETS = {
    #                            hidden    MLP  layers heads kv   vocab  tied  max positions
    "Qwen2.5-0.5B": qwen25_sizes(896,    4864,  24,    14,   2, 151936, True,  32768),
    "Qwen2.5-1.5B": qwen25_sizes(1536,   8960,  28,    12,   2, 151936, True,  131072),
    "Qwen2.5-3B":   qwen25_sizes(2048,  11008,  36,    16,   2, 151936, True,  32768),
    "Qwen2.5-7B":   qwen25_sizes(3584,  18944,  28,    28,   4, 152064, False, 131072),
}
ROPE_THETA = 1000000.0


def preset(model):
    """The preset for 'Qwen2.5-0.5B' or 'Qwen/Qwen2.5-0.5B' (case-insensitive)."""
    key = model.split("/", 1)[1] if model.lower().startswith("qwen/") else model
    for name, hp in QWEN25_PRESETS.items():
        if name.lower() == key.lower():
            return name, hp
    raise ValueError(f"unknown model {model!r}: use one of {', '.join(QWEN25_PRESETS)}")


def transformers_major():
    import transformers
    return int(transformers.__version__.split(".")[0])


def build_model(model, dtype):
    """A randomly initialised Qwen2ForCausalLM on the current CUDA device, in `dtype`, with SDPA."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    _, hp = preset(model)
    config = Qwen2Config(**hp, rope_theta=ROPE_THETA, use_sliding_window=False, use_cache=False,
                         attn_implementation="sdpa")
    # transformers 5 renamed from_config's `torch_dtype` to `dtype`.
    dtype_kwarg = "dtype" if transformers_major() >= 5 else "torch_dtype"
    with torch.device("cuda"):
        net = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", **{dtype_kwarg: dtype})
    return net.to(device="cuda", dtype=dtype)


def train_steps(net, optimizer, batch, accum, seq_len, vocab, steps):
    """Runs `steps` optimizer steps on random tokens; returns the milliseconds of each."""
    import torch

    step_ms = []
    for _ in range(steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(accum):
            tokens = torch.randint(0, vocab, (batch, seq_len), device="cuda")
            loss = net(input_ids=tokens, labels=tokens).loss / accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        step_ms.append(1000.0 * (time.perf_counter() - start))
    return step_ms


def measure(model, batch, accum, seq_len, steps, warmup, compile_model):
    import torch

    _, hp = preset(model)
    torch.manual_seed(0)
    net = build_model(model, torch.bfloat16)
    net.train()
    attn = getattr(net.config, "_attn_implementation", None)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    runner = torch.compile(net) if compile_model else net
    torch.cuda.reset_peak_memory_stats()
    step_ms = train_steps(runner, optimizer, batch, accum, seq_len, hp["vocab_size"], steps)
    tokens = batch * accum * seq_len
    tps = [tokens / (ms / 1000.0) for ms in step_ms[warmup:]]
    return {
        "tokens_per_s": statistics.median(tps),
        "tokens_per_s_mean": statistics.fmean(tps),
        "step_ms": [round(ms, 2) for ms in step_ms],
        "peak_mem_bytes": torch.cuda.max_memory_allocated(),
        "attn_implementation": attn,
    }


def free_cuda_memory():
    import gc
    import torch
    gc.collect()
    torch.cuda.empty_cache()
    with contextlib.suppress(Exception):
        torch._dynamo.reset()


def run_benchmark(model, batch, accum=1, seq_len=1024, steps=12, warmup=4, compile_model=True, halve_on_oom=True):
    """Measures training tokens/s; returns the dict described in the module docstring."""
    import torch
    import transformers

    if steps <= warmup:
        raise ValueError(f"steps ({steps}) must exceed warmup ({warmup}): the timed steps come after the warm-up")
    name, _ = preset(model)
    retries = 0
    while True:
        try:
            result = measure(name, batch, accum, seq_len, steps, warmup, compile_model)
            break
        except torch.cuda.OutOfMemoryError:
            if not halve_on_oom or batch == 1:
                raise
        # Freed only here: inside the except block the traceback still holds the model and optimizer.
        free_cuda_memory()
        batch, accum, retries = batch // 2, accum * 2, retries + 1
        print(f"bench_pytorch: out of memory, retrying with batch {batch} x accum {accum}", file=sys.stderr)
    result.update(model=name, batch=batch, accum=accum, seq_len=seq_len, steps=steps, warmup=warmup,
                  oom_retries=retries, compiled=compile_model, device=torch.cuda.get_device_name(),
                  torch=torch.__version__, transformers=transformers.__version__,
                  peak_mem_gib=result["peak_mem_bytes"] / 2**30)
    return result


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="Qwen2.5-0.5B", help=f"one of {', '.join(QWEN25_PRESETS)}")
    p.add_argument("--batch", type=int, default=32, help="sequences per micro-batch (default 32)")
    p.add_argument("--accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--steps", type=int, default=12, help="optimizer steps in all (default 12)")
    p.add_argument("--warmup", type=int, default=4, help="first steps left out of the average (default 4)")
    p.add_argument("--no-compile", action="store_true", help="run eagerly instead of torch.compile(model)")
    p.add_argument("--no-halve-on-oom", action="store_true", help="fail instead of halving the batch on OOM")
    args = p.parse_args(argv)
    if min(args.batch, args.accum, args.seq_len, args.steps) < 1 or args.warmup < 0:
        p.error("--batch, --accum, --seq-len and --steps must be >= 1, --warmup >= 0")
    if args.steps <= args.warmup:
        p.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        result = run_benchmark(args.model, args.batch, args.accum, args.seq_len, args.steps, args.warmup,
                               compile_model=not args.no_compile, halve_on_oom=not args.no_halve_on_oom)
    except Exception as e:  # one JSON line either way, so bench.py can show the cause in its table
        message = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(json.dumps({"model": args.model, "error": f"{type(e).__name__}: {message}"}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
