#!/usr/bin/env bash
# Quickstart: installs what is missing, builds llmq, tokenizes the bundled tiny-Shakespeare text
# with the real Qwen2.5 tokenizer (no download) and trains Qwen2.5-0.5B on it for a few steps:
# fine-tuning if the model is in the local HF cache, otherwise from scratch with the built-in preset.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "quickstart: llmq is built (./build/train), but no NVIDIA GPU is visible (nvidia-smi failed): training needs one. Stopping."
  exit 0
fi
data=data/tiny-shakespeare-qwen
if [ ! -f "$data/train.bin" ]; then
  mkdir -p "$data"
  python3 scripts/tokenize_data.py --tokenizer qwen --input scripts/data/tinyshakespeare.txt --out "$data/"
fi
model=Qwen/Qwen2.5-0.5B
init=()
hub=${HF_HUB_CACHE:-${HF_HOME:-$HOME/.cache/huggingface}/hub}
[ -d "$hub/models--Qwen--Qwen2.5-0.5B" ] || init=(--from-scratch --learning-rate=6e-4 --warmup=10)
./build/train --model=$model "${init[@]}" \
  --train-file=$data/train.bin --eval-file=$data/eval.bin \
  --model-dtype=bf16 --batch-size=8 --grad-accumulation=4 --seq-len=1024 \
  --steps=50 --eval-every-n-steps=25 --eval-num-steps=8 --ckpt-interval=50 \
  --out-dir=output/quickstart --checkpoint-dir=ckpt/quickstart --log-file=output/quickstart/log.json "$@"
echo "quickstart: done; model in output/quickstart, log in output/quickstart/log.json"
echo "plot it with: python3 scripts/plot_training_run.py output/quickstart/log.json"
