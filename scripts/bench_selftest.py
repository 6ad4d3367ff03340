#!/usr/bin/env python3
"""Self-test of scripts/bench.py (`python3 scripts/bench.py --self-test`, or run this file): checks the log
parsing, the status and cells of table rows, the --batch / --accum syntax and the reading of
bench_pytorch.py's output on canned text. Needs no GPU; standard library only."""

import json
import sys

import bench
from bench_baseline import attach_pytorch, parse_pytorch_output
from bench_table import MISSING, allocator_device_total, format_row_cells, summarize_run

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

    # Per-dtype defaults override the model's own entries and add nothing else.
    fp8_7b = bench.model_defaults("Qwen2.5-7B", "e4m3")
    bf16_7b = bench.model_defaults("Qwen2.5-7B", "bf16")
    check(fp8_7b["batch"] == 2 and bf16_7b["batch"] == 4 and fp8_7b["flags"] == bf16_7b["flags"],
          f"7B e4m3 defaults, got {fp8_7b}")
    check(set(bench.model_defaults("Qwen2.5-7B", "bf16")) == {"batch", "accum", "flags"}, "7B bf16 defaults keys")
    check(bench.model_defaults("unknown", "bf16") == bench.FALLBACK_DEFAULT, "fallback defaults")
    # --batch / --accum syntax.
    check(bench.parse_per_model("16", "--batch") == {"*": 16}, "plain batch")
    check(bench.parse_per_model("Qwen/Qwen2.5-0.5B=8, Qwen2.5-7B=1", "--batch")
          == {"Qwen2.5-0.5B": 8, "Qwen2.5-7B": 1}, "per-model batch")
    for bad in ("x", "Qwen2.5-0.5B=0", "Qwen2.5-0.5B="):
        try:
            bench.parse_per_model(bad, "--batch")
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


if __name__ == "__main__":
    sys.exit(self_test())
