"""Result records and the table of scripts/bench.py.

summarize_run() turns one train run's JSON-lines log (records {"kind": "train", "step", "tps", "sol", ...},
see src/training/logger.h), console output and exit status into a result record: median tokens/s and mean
speed-of-light share over the steps after the warm-up, peak device memory from the [Allocator State]
table, and a status ("ok", "refused: ...", "failed ...", "crashed ...", "timeout ..."). markdown_report()
and write_outputs() turn a list of records (with model, dtype, batch, accum, flags and, from
bench_baseline.attach_pytorch(), pytorch and ratio added) into the Markdown table and the JSON file.
Standard library only.
"""

import json
import re
import signal
import statistics
import sys
from pathlib import Path

MISSING = "-"  # table cell of a value that was not measured


# ------------------------------------------------------------------------------------------ records


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


# ------------------------------------------------------------------------------------------ table


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
        runs = [r for r in rows if r["model"] == model]
        for flags in dict.fromkeys(tuple(r["flags"]) for r in runs if r["flags"]):
            dtypes = [r["dtype"] for r in runs if tuple(r["flags"]) == flags]
            which = "" if len(dtypes) == len(runs) else f" ({', '.join(dtypes)})"
            notes.append(f"{model}{which}: {' '.join(flags)}")
    text = head + "\n\n" + markdown_table(rows) + "\n"
    if notes:
        text += "\nExtra train flags: " + "; ".join(notes) + "\n"
    return text


def write_outputs(rows, settings, out):
    """The report to OUT.md and settings + rows to OUT.json (a .md or .json suffix of out is dropped first)."""
    base = Path(out)
    if base.suffix in (".md", ".json"):
        base = base.with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    base.with_suffix(".md").write_text(markdown_report(rows, settings))
    base.with_suffix(".json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=1) + "\n")
    print(f"[bench] wrote {base.with_suffix('.md')} and {base.with_suffix('.json')}", file=sys.stderr)
