#!/usr/bin/env python3
"""Benchmark table runner: trains each model x matmul dtype for a few steps with `train` and reports speed.

For every model and dtype it runs
  train --model=M --from-scratch --model-dtype=bf16 --matmul-dtype=DTYPE --batch-size=B
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
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Micro-batch, gradient accumulation and extra train flags per model for one 80 GB H100 at seq 1024,
# no recomputation. Device memory (bf16 weights + bf16 gradients + Adam moments + activations, estimated
# from src/model/run_state.cpp): 0.5B B=32 ~47 GiB; 1.5B B=16 ~56 GiB; 3B B=8 ~64 GiB; 7B does not fit
# with fp32 Adam moments (85 GiB of weights, gradients and moments), so it keeps them in bf16: B=2 ~67 GiB.
# Accumulation keeps the optimizer step a small share of a step for the larger models.
MODEL_DEFAULTS = {
    "Qwen2.5-0.5B": {"batch": 32, "accum": 1, "flags": []},
    "Qwen2.5-1.5B": {"batch": 16, "accum": 1, "flags": []},
    "Qwen2.5-3B": {"batch": 8, "accum": 2, "flags": []},
    "Qwen2.5-7B": {"batch": 2, "accum": 8, "flags": ["--opt-m-dtype=bf16", "--opt-v-dtype=bf16"]},
}
FALLBACK_DEFAULT = {"batch": 4, "accum": 4, "flags": []}  # a model not in the table
PYTORCH_MODELS = ("Qwen2.5-0.5B", "Qwen2.5-1.5B")

MISSING = "-"  # table cell of a value that was not measured


# ------------------------------------------------------------------------------------------ parsing


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


def read_log_records(text):
    """The JSON objects of a JSON-lines log; a torn last line (killed run) is skipped."""
    records = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def train_records(records):
    return sorted((r for r in records if r.get("kind") == "train"), key=lambda r: r.get("step", 0))


_SIZE_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def allocator_device_total(console):
    """Bytes of the 'Device total' line of the [Allocator State] table, or None."""
    m = re.search(r"\[Allocator State\].*?Device total:\s*([\d.]+)\s*(B|KiB|MiB|GiB|TiB)", console, re.S)
    return float(m.group(1)) * _SIZE_UNITS[m.group(2)] if m else None


def gpu_name(console):
    """The GPU line of train's [System] block ('NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 79.1 GiB)'), or None."""
    m = re.search(r"^\[System\]\s*\n\s*(.+)$", console, re.M)
    return m.group(1).strip() if m else None


def first_error_line(stderr, stdout=""):
    """The line that says why a run failed: train's 'error: ...' line, else the last line it printed."""
    for text in (stderr, stdout):
        for line in text.splitlines():
            if line.startswith("error:"):
                return line[len("error:"):].strip()
    for text in (stderr, stdout):
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if lines:
            return lines[-1]
    return "no output"


def summarize_run(log_text, stdout, stderr, exit_code, steps, warmup, timed_out=False, timeout=None):
    """Everything a table row needs from one train run's log, console output and exit status."""
    records = train_records(read_log_records(log_text))
    timed = [r for r in records if r.get("step", 0) >= warmup]
    tps = [float(r["tps"]) for r in timed if isinstance(r.get("tps"), (int, float))]
    sols = [float(r["sol"]) for r in timed if isinstance(r.get("sol"), (int, float))]
    peak = allocator_device_total(stdout)
    out = {
        "exit_code": exit_code,
        "steps_logged": len(records),
        "tokens_per_s": statistics.median(tps) if tps else None,
        "tokens_per_s_mean": statistics.fmean(tps) if tps else None,
        "sol": statistics.fmean(sols) if sols else None,
        "peak_device_bytes": peak,
        "peak_device_gib": peak / 2**30 if peak is not None else None,
        "gpu": gpu_name(stdout),
        "loss_last": records[-1].get("loss") if records else None,
    }
    if timed_out:
        out["status"] = f"timeout after {timeout:g} s ({len(records)} of {steps} steps logged)"
    elif exit_code is not None and exit_code < 0:
        name = signal.Signals(-exit_code).name if -exit_code in signal.valid_signals() else str(-exit_code)
        out["status"] = f"crashed ({name}) after {len(records)} steps: {first_error_line(stderr, stdout)}"
    elif exit_code != 0:
        reason = first_error_line(stderr, stdout)
        out["status"] = (f"refused: {reason}" if not records
                         else f"failed (exit {exit_code}) after {len(records)} steps: {reason}")
    elif not tps:
        out["status"] = f"no timed steps: {len(records)} steps logged, --warmup {warmup}"
    else:
        out["status"] = "ok"
    return out


# ------------------------------------------------------------------------------------------ formatting


def format_tps(tps):
    if tps is None:
        return MISSING
    return f"{tps / 1e3:.1f}k" if tps >= 1e3 else f"{tps:.0f}"


def format_row_cells(row, max_status=90):
    """The table cells of one result row (see table_header())."""
    status = row["status"]
    speed = format_tps(row["tokens_per_s"]) if status == "ok" else (
        status if len(status) <= max_status else status[: max_status - 3] + "...")
    pt = row.get("pytorch")
    if pt is None:
        pt_cell = MISSING
    elif pt.get("error"):
        pt_cell = "error: " + pt["error"][:60]
    else:
        pt_cell = format_tps(pt.get("tokens_per_s"))
        if (pt.get("batch"), pt.get("accum")) != (row["batch"], row["accum"]):
            pt_cell += f" ({pt.get('batch')} x {pt.get('accum')})"
    ratio = row.get("ratio")
    return [
        row["model"],
        row["dtype"],
        f"{row['batch']} x {row['accum']}",
        speed.replace("|", "/"),
        f"{100 * row['sol']:.1f}" if row.get("sol") is not None else MISSING,
        f"{row['peak_device_gib']:.1f}" if row.get("peak_device_gib") is not None else MISSING,
        pt_cell.replace("|", "/"),
        f"{ratio:.2f}" if ratio is not None else MISSING,
    ]


def table_header():
    return ["model", "dtype", "batch x accum", "tokens/s", "SOL %", "peak GiB", "PyTorch tokens/s", "ratio"]


def markdown_table(rows):
    lines = ["| " + " | ".join(table_header()) + " |", "|" + "---|" * len(table_header())]
    lines += ["| " + " | ".join(format_row_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def markdown_report(rows, settings):
    gpu = next((r["gpu"] for r in rows if r.get("gpu")), "GPU unknown")
    head = (f"{gpu}; seq {settings['seq_len']}; {settings['steps']} steps, tokens/s = median of the steps after "
            f"the first {settings['warmup']}; SOL % = mean share of the matmul dtype's dense peak; peak GiB = "
            f"llmq allocator (PyTorch: max_memory_allocated).")
    notes = []
    for model in dict.fromkeys(r["model"] for r in rows):
        flags = next(r["flags"] for r in rows if r["model"] == model)
        if flags:
            notes.append(f"{model}: {' '.join(flags)}")
    text = head + "\n\n" + markdown_table(rows) + "\n"
    if notes:
        text += "\nExtra train flags: " + "; ".join(notes) + "\n"
    return text


# ------------------------------------------------------------------------------------------ running


class MemoryPoller:
    """Largest nvidia-smi memory.used (bytes) of one GPU while a run is going; None without nvidia-smi."""

    def __init__(self, gpu_index, interval=0.5):
        self.gpu_index = gpu_index
        self.interval = interval
        self.peak = None
        self._stop = threading.Event()
        self._thread = None

    def read(self):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                  f"--id={self.gpu_index}"], capture_output=True, text=True, timeout=10)
            return int(out.stdout.strip().splitlines()[0]) * 2**20 if out.returncode == 0 else None
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            return None

    def _loop(self):
        while not self._stop.wait(self.interval):
            used = self.read()
            if used is not None:
                self.peak = used if self.peak is None else max(self.peak, used)

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread:
            self._thread.join()


def visible_gpu_index():
    """nvidia-smi's index of CUDA device 0 (the first CUDA_VISIBLE_DEVICES entry when that is a number)."""
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    return first if first.isdigit() else "0"


def run_process(cmd, stdout_path, stderr_path, timeout, env=None):
    """Runs cmd with output to files; returns (exit code, timed out). On timeout the process group is
    sent SIGTERM, then SIGKILL 15 s later."""
    with open(stdout_path, "w") as out, open(stderr_path, "w") as err:
        try:
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, start_new_session=True)
        except OSError as e:
            err.write(f"error: cannot start {cmd[0]}: {e.strerror}\n")
            return 127, False
        try:
            return proc.wait(timeout=timeout), False
        except subprocess.TimeoutExpired:
            for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, None)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
            return proc.wait(), True


def train_env(train):
    """The environment for `train`: like scripts/gpu_check.sh, BIN_DIR/lib (if any) goes on LD_LIBRARY_PATH."""
    env = dict(os.environ)
    lib = Path(train).resolve().parent / "lib"
    if lib.is_dir():
        env["LD_LIBRARY_PATH"] = f"{lib}:{env.get('LD_LIBRARY_PATH', '')}"
    return env


def train_command(args, model, dtype, batch, accum, flags, run_dir, token_file):
    cmd = [args.train, f"--model={model}", "--from-scratch", f"--model-dtype={'fp32' if dtype == 'fp32' else 'bf16'}",
           f"--matmul-dtype={dtype}", f"--batch-size={batch}", f"--grad-accumulation={accum}",
           f"--seq-len={args.seq_len}", f"--steps={args.steps}", f"--train-file={token_file}",
           "--eval-every-n-steps=0", f"--eval-file={run_dir / 'no-eval.bin'}",  # missing file: no final eval
           "--ckpt-interval=0", "--no-save-training-state", f"--checkpoint-dir={run_dir / 'ckpt'}",
           f"--out-dir={run_dir / 'out'}", f"--log-file={run_dir / 'log.json'}", "--name=bench"]
    return cmd + flags + shlex.split(args.extra)


def run_train(args, model, dtype, token_file, work_dir):
    key = model_key(model)
    defaults = MODEL_DEFAULTS.get(key, FALLBACK_DEFAULT)
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


def parse_pytorch_output(stdout, stderr, exit_code, timed_out, timeout):
    """bench_pytorch.py's JSON line as a dict; {'error': ...} when there is none."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                pass
    if timed_out:
        return {"error": f"timeout after {timeout:g} s"}
    return {"error": f"exit {exit_code}: {first_error_line(stderr)}"}


def run_pytorch(args, model, batch, accum, work_dir):
    run_dir = Path(tempfile.mkdtemp(prefix=f"pytorch-{model}-", dir=work_dir))
    cmd = [args.python, str(REPO / "scripts" / "bench_pytorch.py"), f"--model={model}", f"--batch={batch}",
           f"--accum={accum}", f"--seq-len={args.seq_len}", f"--steps={args.steps}", f"--warmup={args.warmup}"]
    print(f"[bench] PyTorch {model} B={batch} x {accum}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    exit_code, timed_out = run_process(cmd, run_dir / "stdout.txt", run_dir / "stderr.txt", args.timeout)
    result = parse_pytorch_output((run_dir / "stdout.txt").read_text(errors="replace"),
                                  (run_dir / "stderr.txt").read_text(errors="replace"), exit_code, timed_out,
                                  args.timeout)
    if args.log_dir:
        keep = Path(args.log_dir) / f"pytorch-{model}"
        keep.mkdir(parents=True, exist_ok=True)
        for name in ("stdout.txt", "stderr.txt"):
            shutil.copy(run_dir / name, keep / name)
    shutil.rmtree(run_dir, ignore_errors=True)
    print(f"[bench]   -> {result.get('error') or format_tps(result.get('tokens_per_s')) + ' tokens/s'}",
          file=sys.stderr, flush=True)
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


def attach_pytorch(rows, pytorch):
    for row in rows:
        pt = pytorch.get(row["model"])
        row["pytorch"] = pt
        ok = row["status"] == "ok" and pt and not pt.get("error") and pt.get("tokens_per_s")
        row["ratio"] = row["tokens_per_s"] / pt["tokens_per_s"] if ok else None


def run_all(args):
    with tempfile.TemporaryDirectory(prefix="llmq-bench-") as work_dir:
        token_file = args.token_file or make_token_file(work_dir)
        rows, pytorch = [], {}
        for model in args.models:
            key = model_key(model)
            for dtype in args.dtypes:
                rows.append(run_train(args, model, dtype, token_file, work_dir))
            if args.pytorch and key in args.pytorch_models:
                first = rows[-1]
                pytorch[key] = run_pytorch(args, key, first["batch"], first["accum"], work_dir)
    attach_pytorch(rows, pytorch)
    return rows


def write_outputs(rows, settings, out):
    base = Path(out)
    if base.suffix in (".md", ".json"):
        base = base.with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    base.with_suffix(".md").write_text(markdown_report(rows, settings))
    base.with_suffix(".json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=1) + "\n")
    print(f"[bench] wrote {base.with_suffix('.md')} and {base.with_suffix('.json')}", file=sys.stderr)


# ------------------------------------------------------------------------------------------ self-test

_CANNED_STDOUT = """[Options]
  model : Qwen2.5-0.5B
[System]
  NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 79.1 GiB)
[Dataset]
  train: 1003855 tokens in 1 file(s), 30 steps per epoch
[Allocator State]
       Weights:  942.3 MiB
   Activations:   38.52 GiB
  Device total:   46.95 GiB
[T] step     0 [  3.3%] | time:  2100 ms | norm   4.315545 | loss  12.100000 | tps 15604 | sol 4.9%
"""


def _canned_log(tps_by_step, sol=0.45):
    lines = [json.dumps({"kind": "options", "model": "Qwen2.5-0.5B", "steps": len(tps_by_step)}),
             json.dumps({"kind": "gpu", "step": 0, "gpu_util": 99, "mem_util": 40})]
    for step, tps in enumerate(tps_by_step):
        lines.append(json.dumps({"kind": "train", "step": step, "epoch": 0.1, "progress": 0.1, "lr": 1e-5,
                                 "loss": 12.0 - step, "norm": 1.0, "time_ms": 32768 / tps * 1e3, "tokens": 32768,
                                 "tps": tps, "sol": sol if step else None}))
    return "\n".join(lines) + "\n" + '{"kind": "train", "st'  # a torn last line, as after a kill


def self_test():
    failures = []

    def check(cond, what):
        if not cond:
            failures.append(what)

    # A good run: warm-up steps 0..3 are left out; median of 140k, 150k, 145k, 160k, 150k, 155k.
    tps = [15000, 90000, 120000, 130000, 140000, 150000, 145000, 160000, 150000, 155000]
    r = summarize_run(_canned_log(tps), _CANNED_STDOUT, "", 0, steps=10, warmup=4)
    check(r["status"] == "ok", f"status ok, got {r['status']}")
    check(r["steps_logged"] == 10, f"10 train records, got {r['steps_logged']}")
    check(r["tokens_per_s"] == 150000, f"median tps 150000, got {r['tokens_per_s']}")
    check(abs(r["sol"] - 0.45) < 1e-12, f"mean sol 0.45, got {r['sol']}")
    check(abs(r["peak_device_gib"] - 46.95) < 1e-9, f"peak 46.95 GiB, got {r['peak_device_gib']}")
    check(r["gpu"] == "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 79.1 GiB)", f"gpu name, got {r['gpu']}")
    r.update(model="Qwen2.5-0.5B", dtype="bf16", batch=32, accum=1, flags=[])
    attach_pytorch([r], {"Qwen2.5-0.5B": {"tokens_per_s": 120000.0, "batch": 32, "accum": 1}})
    cells = format_row_cells(r)
    check(cells == ["Qwen2.5-0.5B", "bf16", "32 x 1", "150.0k", "45.0", "47.0", "120.0k", "1.25"],
          f"ok row cells, got {cells}")

    # A refusal at start-up: no train records, exit 1, one error line on stderr.
    refusal = ("error: --matmul-dtype e4m3 is not implemented yet in this build (tracked in issue #4): "
               "leave it out to train without it\n")
    r = summarize_run("", "[Options]\n  model : Qwen2.5-0.5B\n", refusal, 1, steps=10, warmup=4)
    check(r["status"] == "refused: --matmul-dtype e4m3 is not implemented yet in this build (tracked in issue "
          "#4): leave it out to train without it", f"refusal status, got {r['status']}")
    r.update(model="Qwen2.5-0.5B", dtype="e4m3", batch=32, accum=1, flags=[])
    attach_pytorch([r], {"Qwen2.5-0.5B": {"tokens_per_s": 120000.0, "batch": 16, "accum": 2}})
    cells = format_row_cells(r)
    check(cells[3].startswith("refused: --matmul-dtype e4m3 is not implemented yet"), f"refusal cell {cells[3]}")
    check(len(cells[3]) <= 90, f"refusal cell is shortened to 90 characters, got {len(cells[3])}")
    check(cells[4:] == [MISSING, MISSING, "120.0k (16 x 2)", MISSING], f"refusal row tail, got {cells[4:]}")

    # Failures after some steps, crashes, timeouts, runs without timed steps.
    r = summarize_run(_canned_log(tps[:3]), _CANNED_STDOUT, "error: step 2: the loss is nan (diverged)\n", 1, 10, 4)
    check(r["status"].startswith("failed (exit 1) after 3 steps: step 2: the loss is nan"), f"failed: {r['status']}")
    r = summarize_run("", "", "Segmentation fault\n", -11, 10, 4)
    check(r["status"] == "crashed (SIGSEGV) after 0 steps: Segmentation fault", f"crash: {r['status']}")
    r = summarize_run(_canned_log(tps[:5]), _CANNED_STDOUT, "", -15, 10, 4, timed_out=True, timeout=60)
    check(r["status"] == "timeout after 60 s (5 of 10 steps logged)", f"timeout: {r['status']}")
    r = summarize_run(_canned_log(tps[:3]), _CANNED_STDOUT, "", 0, 3, 4)
    check(r["status"].startswith("no timed steps"), f"no timed steps: {r['status']}")
    check(allocator_device_total("[Allocator State]\n  Device total:  512.0 MiB\n") == 512 * 2**20, "MiB total")
    check(allocator_device_total("no table") is None, "no allocator table -> None")

    # --batch / --accum syntax.
    check(parse_per_model("16", "--batch") == {"*": 16}, "plain batch")
    check(parse_per_model("Qwen/Qwen2.5-0.5B=8, Qwen2.5-7B=1", "--batch") == {"Qwen2.5-0.5B": 8, "Qwen2.5-7B": 1},
          "per-model batch")
    for bad in ("x", "Qwen2.5-0.5B=0", "Qwen2.5-0.5B="):
        try:
            parse_per_model(bad, "--batch")
            failures.append(f"--batch {bad!r} must be refused")
        except ValueError:
            pass

    # bench_pytorch.py output: its JSON line, or the cause of a failure.
    pt = parse_pytorch_output('compiling...\n{"tokens_per_s": 1.5, "batch": 2}\n', "", 0, False, 60)
    check(pt == {"tokens_per_s": 1.5, "batch": 2}, f"pytorch json, got {pt}")
    pt = parse_pytorch_output("", "Traceback ...\nModuleNotFoundError: No module named 'torch'\n", 1, False, 60)
    check(pt == {"error": "exit 1: ModuleNotFoundError: No module named 'torch'"}, f"pytorch error, got {pt}")

    for f in failures:
        print(f"self-test FAILED: {f}", file=sys.stderr)
    print(f"self-test: {'FAILED' if failures else 'passed'} ({len(failures)} failures)")
    return 1 if failures else 0


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
