#!/usr/bin/env python3
"""Plots train and eval loss of an llmq run from its JSON-lines log (--log-file) into a PNG.

Usage: plot_training_run.py log.json [more.json ...] [--out plot.png] [--title TEXT]
Several logs are drawn into the same axes (e.g. a bf16 and an FP8 run), labelled by file name.
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_records(path):
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    sys.exit(f"{path}:{n}: not a JSON record ({e})")
    return records


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("logs", nargs="+")
    p.add_argument("--out", default=None, help="PNG path (default: the first log with .png)")
    p.add_argument("--title", default=None)
    args = p.parse_args()

    fig, ax = plt.subplots(figsize=(8, 5))
    for path in args.logs:
        recs = read_records(path)
        label = os.path.splitext(os.path.basename(path))[0]
        train = [(r["step"], r["loss"]) for r in recs if r.get("kind") == "train" and r.get("loss") is not None]
        evals = [(r["step"], r["loss"]) for r in recs if r.get("kind") == "eval" and r.get("loss") is not None]
        if not train and not evals:
            sys.exit(f"{path}: no train or eval records")
        if train:
            ax.plot(*zip(*train), alpha=0.5, linewidth=1, label=f"{label} train")
        if evals:
            ax.plot(*zip(*evals), marker="o", linewidth=2, label=f"{label} eval")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(args.title or "llmq training run")
    ax.grid(alpha=0.3)
    ax.legend()
    out = args.out or os.path.splitext(args.logs[0])[0] + ".png"
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
