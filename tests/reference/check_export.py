#!/usr/bin/env python3
"""Checks an llmq-exported model with transformers: it loads without conversion, and its loss on the
eval token file equals the final [V] (eval) loss llmq logged, within --tolerance (relative).

The batches are those of llmq's eval loader: non-overlapping windows of T+1 tokens starting at
multiples of T, in file order, grouped into full batches of B; the loss is the mean of per-batch means.
Usage: check_export.py --model DIR --tokens eval.bin --log log.json [--batch 16 --seq-len 1024]
"""
import argparse
import json
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM


def read_tokens(path):
    header = np.fromfile(path, dtype=np.int32, count=256)
    if header[:2].tobytes() != b"BIN.TOK\n":
        sys.exit(f"{path}: not a BIN.TOK token file")
    count = int(header[4])
    return np.fromfile(path, dtype=np.int32, count=count, offset=1024)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--tokens", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--tolerance", type=float, default=1e-3)
    args = p.parse_args()

    evals = [r for r in map(json.loads, open(args.log)) if r.get("kind") == "eval"]
    if not evals:
        sys.exit("no eval record in the log")
    ours = evals[-1]["loss"]

    model = AutoModelForCausalLM.from_pretrained(args.model).cuda().eval()
    tokens = read_tokens(args.tokens)
    B, T = args.batch, args.seq_len
    samples = (len(tokens) - 1) // T
    losses = []
    with torch.no_grad():
        for b in range(samples // B):
            rows = np.stack([tokens[(b * B + i) * T:(b * B + i) * T + T + 1] for i in range(B)]).astype(np.int64)
            x = torch.from_numpy(rows).cuda()
            logits = model(input_ids=x[:, :-1]).logits.float()
            losses.append(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1)).item())
    theirs = float(np.mean(losses))
    rel = abs(theirs - ours) / abs(theirs)
    ok = rel < args.tolerance
    print(f"export: transformers loaded {args.model} ({model.dtype}); eval loss transformers {theirs:.6f}, "
          f"llmq [V] {ours:.6f}, rel diff {rel:.2e} (tol {args.tolerance:.0e}) {'PASS' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
