"""The PyTorch baseline of scripts/bench.py: runs scripts/bench_pytorch.py (PyTorch + transformers,
torch.compile) with the batch llmq ran for a model, reads its one JSON line, and puts the result and the
llmq / PyTorch tokens-per-second ratio on the table rows. Standard library only."""

import json
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

from bench_process import run_process
from bench_table import first_error_line, format_tps

BENCH_PYTORCH = Path(__file__).resolve().parent / "bench_pytorch.py"
PYTORCH_MODELS = ("Qwen2.5-0.5B", "Qwen2.5-1.5B")  # default of --pytorch-models


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
    """One bench_pytorch.py run (interpreter args.python; seq_len, steps, warmup, timeout and log_dir from
    args); its result dict, or {'error': ...}."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"pytorch-{model}-", dir=work_dir))
    cmd = [args.python, str(BENCH_PYTORCH), f"--model={model}", f"--batch={batch}",
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


def attach_pytorch(rows, pytorch):
    """Adds 'pytorch' (the baseline's result for the row's model, or None) and 'ratio' (llmq / PyTorch
    tokens/s where both ran) to every row; pytorch maps model key -> run_pytorch() result."""
    for row in rows:
        pt = pytorch.get(row["model"])
        row["pytorch"] = pt
        ok = row["status"] == "ok" and pt and not pt.get("error") and pt.get("tokens_per_s")
        row["ratio"] = row["tokens_per_s"] / pt["tokens_per_s"] if ok else None
