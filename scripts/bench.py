#!/usr/bin/env python3
"""Benchmark table runner: trains each model x matmul dtype for a few steps with `train` and reports speed.

For every model and dtype it runs
  train --model=M --from-scratch --model-dtype=bf16 --matmul-dtype=DTYPE [--gradient-dtype=e5m2 with e4m3] --batch-size=B
        --grad-accumulation=A --seq-len=T --steps=S --train-file=TOKENS --eval-every-n-steps=0
        --eval-file=<missing file: no final evaluation> --ckpt-interval=0 --no-save-training-state
        --out-dir/--checkpoint-dir/--log-file=<temp dir> <per-model flags> <--extra>
then reads its JSON-lines log (records {"kind": "train", "step", "tps", "sol", ...}, see
src/training/logger.h) and reports, over the steps after --warmup: the median tokens/s and the mean
speed-of-light share. Peak device memory is the allocator's "Device total" from the [Allocator State]
table train prints at start-up (llmq allocates everything up front, so that total is its peak; the
log holds no memory figure); the JSON output also has the largest nvidia-smi memory.used seen
during the run (CUDA context and library memory included). A run that fails is a table row
("refused: <first line of the error>"), never an abort of this script.

With --pytorch, scripts/bench_pytorch.py (PyTorch + transformers, torch.compile) runs the same
batch for the models it supports (0.5B and 1.5B by default) and the table shows the ratio.

  python3 scripts/bench.py                                   # the default table (Qwen2.5 0.5B..7B x bf16, e4m3)
  python3 scripts/bench.py --models Qwen2.5-0.5B --dtypes bf16 --pytorch --out bench/h100
  python3 scripts/bench.py --batch Qwen2.5-1.5B=8 --accum Qwen2.5-1.5B=2 --extra "--recompute-ffn"
  python3 scripts/bench.py --self-test                       # checks the log parsing, needs no GPU

Standard library only.
"""

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The pieces next to this file: bench_table.py (result records from train's logs, the Markdown table and
# the JSON output), bench_baseline.py (the PyTorch baseline: runs bench_pytorch.py), bench_process.py
# (child processes with a time limit, GPU memory polling), bench_selftest.py (--self-test).
from bench_baseline import PYTORCH_MODELS, attach_pytorch, run_pytorch
from bench_process import MemoryPoller, run_process, visible_gpu_index
from bench_table import first_error_line, format_tps, markdown_report, summarize_run, write_outputs

REPO = Path(__file__).resolve().parent.parent

# Micro-batch, gradient accumulation and extra train flags per model for one 80 GB H100 at seq 1024,
# no recomputation. Device memory (llmq's allocator, measured): 0.5B B=32 47 GiB; 1.5B B=24 74 GiB;
# 3B B=8 63 GiB; 7B does not fit with fp32 Adam moments (85 GiB of weights, gradients and moments), so
# it keeps them in bf16: B=4 76 GiB. A dtype key overrides entries for that matmul dtype. FP8 (e4m3
# with e5m2 gradients) keeps x^T e4m3 of the GEMM inputs instead of their bf16 copies per layer
# (less memory), which leaves room for a larger micro-batch for 3B: B=12 78 GiB (40.2k tokens/s
# against 39.8k at B=8); 7B's 12 GiB of e4m3 weight copies (W and W^T) leave B=2 (77 GiB).
# Accumulation makes a step 128 to 512 sequences (LLM.Q's own 0.5B benchmark ran 32 x 16), which
# keeps the optimizer step (a pass over every parameter's weights, gradients and moments) a small
# share: measured on the H100, 7B e4m3 ran 18.0k tokens/s at 2 x 8, 18.9k at 2 x 16 and 19.3k at
# 2 x 32; 0.5B bf16, whose micro-steps are long against its optimizer step, ran 156.9k at 32 x 4 and
# 156.4k at 32 x 16.
MODEL_DEFAULTS = {
    "Qwen2.5-0.5B": {"batch": 32, "accum": 16, "flags": []},
    "Qwen2.5-1.5B": {"batch": 24, "accum": 12, "flags": []},
    "Qwen2.5-3B": {"batch": 8, "accum": 16, "flags": [], "e4m3": {"batch": 12, "accum": 12}},
    "Qwen2.5-7B": {"batch": 4, "accum": 32, "flags": ["--opt-m-dtype=bf16", "--opt-v-dtype=bf16"],
                   "e4m3": {"batch": 2, "accum": 64}},
}
FALLBACK_DEFAULT = {"batch": 4, "accum": 4, "flags": []}  # a model not in the table


# ------------------------------------------------------------------------------------------ per-model settings


def model_key(model):
    """'Qwen/Qwen2.5-0.5B' -> 'Qwen2.5-0.5B' (the key of MODEL_DEFAULTS)."""
    return model.split("/", 1)[1] if model.lower().startswith("qwen/") else model


def parse_per_model(text, flag):
    """'16' (every model) or 'Qwen2.5-0.5B=16,Qwen2.5-1.5B=8' -> {model or '*': int}."""
    out = {}
    if not text:
        return out
    for part in text.split(","):
        name, sep, value = part.strip().rpartition("=")
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"{flag} {text!r}: '{part}' is not N or MODEL=N") from None
        if number < 1:
            raise ValueError(f"{flag} {text!r}: {number} must be >= 1")
        out[model_key(name.strip()) if sep else "*"] = number
    return out


# ------------------------------------------------------------------------------------------ running


def train_env(train):
    """The environment for `train`: like scripts/gpu_check.sh, BIN_DIR/lib (if any) goes on LD_LIBRARY_PATH."""
    env = dict(os.environ)
    lib = Path(train).resolve().parent / "lib"
    if lib.is_dir():
        env["LD_LIBRARY_PATH"] = f"{lib}:{env.get('LD_LIBRARY_PATH', '')}"
    return env


def train_command(args, model, dtype, batch, accum, flags, run_dir, token_file):
    cmd = [args.train, f"--model={model}", "--from-scratch", f"--model-dtype={'fp32' if dtype == 'fp32' else 'bf16'}",
           f"--matmul-dtype={dtype}", *(["--gradient-dtype=e5m2"] if dtype == "e4m3" else []),
           f"--batch-size={batch}", f"--grad-accumulation={accum}",
           f"--seq-len={args.seq_len}", f"--steps={args.steps}", f"--train-file={token_file}",
           "--eval-every-n-steps=0", f"--eval-file={run_dir / 'no-eval.bin'}",  # missing file: no final eval
           "--ckpt-interval=0", "--no-save-training-state", f"--checkpoint-dir={run_dir / 'ckpt'}",
           f"--out-dir={run_dir / 'out'}", f"--log-file={run_dir / 'log.json'}", "--name=bench"]
    return cmd + flags + shlex.split(args.extra)


def model_defaults(key, dtype):
    """MODEL_DEFAULTS[key] with its entries for `dtype` (if any) applied."""
    entry = MODEL_DEFAULTS.get(key, FALLBACK_DEFAULT)
    return {**{k: v for k, v in entry.items() if k in FALLBACK_DEFAULT}, **entry.get(dtype, {})}


def run_train(args, model, dtype, token_file, work_dir):
    key = model_key(model)
    defaults = model_defaults(key, dtype)
    batch = args.batch.get(key, args.batch.get("*", defaults["batch"]))
    accum = args.accum.get(key, args.accum.get("*", defaults["accum"]))
    run_dir = Path(tempfile.mkdtemp(prefix=f"{key}-{dtype}-", dir=work_dir))
    cmd = train_command(args, model, dtype, batch, accum, defaults["flags"], run_dir, token_file)
    print(f"[bench] {key} {dtype} B={batch} x {accum}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    start = time.monotonic()
    with MemoryPoller(visible_gpu_index()) as poller:
        exit_code, timed_out = run_process(cmd, run_dir / "stdout.txt", run_dir / "stderr.txt", args.timeout,
                                           train_env(args.train))
    log_path = run_dir / "log.json"
    result = summarize_run(log_path.read_text(errors="replace") if log_path.exists() else "",
                           (run_dir / "stdout.txt").read_text(errors="replace"),
                           (run_dir / "stderr.txt").read_text(errors="replace"),
                           exit_code, args.steps, args.warmup, timed_out, args.timeout)
    result.update(model=key, dtype=dtype, batch=batch, accum=accum, seq_len=args.seq_len, flags=defaults["flags"]
                  + shlex.split(args.extra), command=shlex.join(cmd), wall_s=round(time.monotonic() - start, 1),
                  smi_peak_gib=poller.peak / 2**30 if poller.peak is not None else None)
    if args.log_dir:
        keep = Path(args.log_dir) / f"{key}-{dtype}"
        keep.mkdir(parents=True, exist_ok=True)
        for name in ("stdout.txt", "stderr.txt", "log.json"):
            if (run_dir / name).exists():
                shutil.copy(run_dir / name, keep / name)
    shutil.rmtree(run_dir, ignore_errors=True)  # the exported model of a 7B run is 15 GB
    done = f"{format_tps(result['tokens_per_s'])} tokens/s" if result["status"] == "ok" else result["status"]
    print(f"[bench]   -> {done}", file=sys.stderr, flush=True)
    return result


def make_token_file(work_dir):
    """Byte-level tokens of tiny Shakespeare (about 1.1M tokens): the speed does not depend on the text."""
    prefix = Path(work_dir) / "tokens"
    cmd = [sys.executable, str(REPO / "scripts" / "tokenize_data.py"), "--tokenizer", "byte", "--input",
           str(REPO / "scripts" / "data" / "tinyshakespeare.txt"), "--eval-fraction", "0", "--out", f"{prefix}/"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"making the token file failed: {first_error_line(done.stderr, done.stdout)}")
    return str(prefix / "train.bin")


def run_all(args):
    with tempfile.TemporaryDirectory(prefix="llmq-bench-") as work_dir:
        token_file = args.token_file or make_token_file(work_dir)
        rows, pytorch = [], {}
        for model in args.models:
            key = model_key(model)
            for dtype in args.dtypes:
                rows.append(run_train(args, model, dtype, token_file, work_dir))
            if args.pytorch and key in args.pytorch_models:  # at the batch of the model's first dtype
                first = rows[-len(args.dtypes)]
                pytorch[key] = run_pytorch(args, key, first["batch"], first["accum"], work_dir)
    attach_pytorch(rows, pytorch)
    return rows



# ------------------------------------------------------------------------------------------ main


def join_extra(argv):
    """['--extra', '--recompute-ffn'] -> ['--extra=--recompute-ffn']: argparse takes a value that starts
    with '--' for a flag of its own."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--extra" and i + 1 < len(argv):
            out.append("--extra=" + argv[i + 1])
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", default=str(REPO / "build" / "train"), help="the train binary (default build/train)")
    p.add_argument("--models", default=",".join(MODEL_DEFAULTS), help="comma-separated (default: %(default)s)")
    p.add_argument("--dtypes", default="bf16,e4m3", help="matmul dtypes, comma-separated (default: %(default)s)")
    p.add_argument("--steps", type=int, default=12, help="optimizer steps per run (default 12)")
    p.add_argument("--warmup", type=int, default=4, help="first steps left out of the average (default 4)")
    p.add_argument("--seq-len", type=int, default=1024, help="tokens per sequence (default 1024)")
    p.add_argument("--batch", default="", help="micro-batch: N for every model or MODEL=N,... (default: per model)")
    p.add_argument("--accum", default="", help="gradient accumulation: N or MODEL=N,... (default: per model)")
    p.add_argument("--extra", default="", help='flags passed on to every train run, e.g. "--recompute-ffn"')
    p.add_argument("--pytorch", action="store_true", help="also run scripts/bench_pytorch.py (same batch)")
    p.add_argument("--pytorch-models", default=",".join(PYTORCH_MODELS),
                   help="models the PyTorch baseline runs for (default: %(default)s)")
    p.add_argument("--python", default=sys.executable, help="interpreter of the PyTorch baseline")
    p.add_argument("--token-file", default=None,
                   help="training tokens (default: byte tokens of scripts/data/tinyshakespeare.txt, made in a temp dir)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per run before it is stopped (default 600)")
    p.add_argument("--out", default=None, help="write the table to OUT.md and the results to OUT.json")
    p.add_argument("--log-dir", default=None, help="keep each run's console output and JSON log here")
    p.add_argument("--self-test", action="store_true", help="check the log parsing and table rows, then exit")
    args = p.parse_args(join_extra(sys.argv[1:] if argv is None else argv))
    if args.self_test:
        return args
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    args.pytorch_models = {model_key(m.strip()) for m in args.pytorch_models.split(",") if m.strip()}
    try:
        args.batch = parse_per_model(args.batch, "--batch")
        args.accum = parse_per_model(args.accum, "--accum")
    except ValueError as e:
        p.error(str(e))
    if not args.models or not args.dtypes:
        p.error("--models and --dtypes need at least one entry each")
    if args.steps < 1 or args.warmup < 0 or args.steps <= args.warmup:
        p.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup}) >= 0")
    if args.seq_len < 2 or args.timeout <= 0:
        p.error("--seq-len must be >= 2 and --timeout > 0")
    if not (Path(args.train).is_file() and os.access(args.train, os.X_OK)):
        p.error(f"--train {args.train}: no executable there (build it first: see README.md)")
    if args.token_file and not Path(args.token_file).is_file():
        p.error(f"--token-file {args.token_file} not found (leave it out to make byte tokens on the fly)")
    try:
        shlex.split(args.extra)
    except ValueError as e:
        p.error(f"--extra {args.extra!r}: {e}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.self_test:
        from bench_selftest import self_test  # it imports this file as module `bench`
        return self_test()
    rows = run_all(args)
    settings = {"train": args.train, "models": args.models, "dtypes": args.dtypes, "steps": args.steps,
                "warmup": args.warmup, "seq_len": args.seq_len, "extra": args.extra, "pytorch": args.pytorch}
    print(markdown_report(rows, settings))
    if args.out:
        write_outputs(rows, settings, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
