#!/usr/bin/env bash
# Runs llmq's GPU checks on a machine with an NVIDIA GPU, from binaries built there or elsewhere.
#   bash scripts/gpu_check.sh [BIN_DIR] [STAGE...]   stages: tests reference train resume bench table memory errors profile scaling quickstart
#                                                    (default: all but quickstart)
# BIN_DIR holds train, reference_step and gpu_test_* (default: build); BIN_DIR/lib, if present, is put on
# LD_LIBRARY_PATH (libraries the GPU machine lacks). Logs go to $OUT (default: gpu_logs): one log per
# stage and summary.txt, whose lines are also printed at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-build}; shift || true
STAGES=${*:-tests reference train resume bench}
# The quickstart stage builds the repository itself, like a user: needs the pip packages of
# scripts/setup.sh importable (carry wheels where there is no network).
OUT=${OUT:-gpu_logs}; mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"; : > "$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }

# Binaries built against a newer cuDNN than the system's run with the one PyTorch ships.
torch_cudnn=$(python3 -c "import nvidia.cudnn, os; print(os.path.join(list(nvidia.cudnn.__path__)[0], 'lib'))" 2>/dev/null || true)
export LD_LIBRARY_PATH="$BIN/lib:${torch_cudnn}:${LD_LIBRARY_PATH:-}"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | sed 's/^/gpu: /' | tee -a "$SUMMARY"

stage_tests() {
  local pass=0 fail=0 t
  for t in "$BIN"/gpu_test_* "$BIN"/tests/gpu_test_*; do
    [ -x "$t" ] || continue
    if "$t" --gtest_brief=1 >>"$OUT/tests.log" 2>&1; then pass=$((pass + 1)); else fail=$((fail + 1)); note "FAILED: $(basename "$t")"; fi
  done
  grep -E "^\[  (PASSED|FAILED)|FAILED TEST|tolerance|rel" "$OUT/tests.log" | tail -n 40 >>"$SUMMARY" || true
  note "gpu test executables: $pass passed, $fail failed"
}

stage_reference() {
  python3 tests/reference/compare_with_transformers.py --driver "$BIN/reference_step" >"$OUT/reference.log" 2>&1
  local rc=$?
  grep -E "^\[|gradients:|weights after|    |reference:|FAIL|Error|error" "$OUT/reference.log" | tail -n 40 >>"$SUMMARY"
  python3 tests/reference/compare_with_transformers.py --driver "$BIN/reference_step" --case qwen0.5b --steps 3 \
    >"$OUT/reference_05b.log" 2>&1 || rc=1
  grep -E "^\[|gradients:|weights after|    |reference:|FAIL|rror" "$OUT/reference_05b.log" | tail -n 20 >>"$SUMMARY"
  note "reference stage rc=$rc"
}

shakespeare_tokens() {  # byte-level tokens need nothing installed; the vocab (257) fits any Qwen preset
  local d=/tmp/llmq_data
  [ -f $d/train.bin ] || python3 scripts/tokenize_data.py --tokenizer byte --input scripts/data/tinyshakespeare.txt \
    --out $d/ >>"$OUT/train.log" 2>&1
  echo $d
}

train_common() {
  local d; d=$(shakespeare_tokens)
  echo --model=Qwen/Qwen2.5-0.5B --from-scratch --train-file=$d/train.bin --eval-file=$d/eval.bin \
    --model-dtype=bf16 --seq-len=1024 --learning-rate=6e-4 --warmup=20 --final-lr-fraction=0.1
}

stage_train() {
  "$BIN/train" $(train_common) --batch-size=16 --grad-accumulation=2 --steps=200 --eval-every-n-steps=25 \
    --eval-num-steps=8 --ckpt-interval=0 --out-dir=/tmp/llmq_out/train --checkpoint-dir=/tmp/llmq_ckpt/train \
    --log-file="$OUT/train_log.json" >"$OUT/train.log" 2>&1
  local rc=$?
  grep -E "^\[V\]|error" "$OUT/train.log" | tail -n 12 >>"$SUMMARY"
  grep -E "^\[T\]" "$OUT/train.log" | tail -n 3 >>"$SUMMARY"
  note "train stage rc=$rc"
  python3 scripts/plot_training_run.py "$OUT/train_log.json" --out "$OUT/train_loss.png" \
    --title "Qwen2.5-0.5B shape from scratch, tiny Shakespeare (bytes), bf16" >>"$OUT/train.log" 2>&1
  python3 tests/reference/check_export.py --model /tmp/llmq_out/train --tokens /tmp/llmq_data/eval.bin \
    --log "$OUT/train_log.json" >>"$OUT/train.log" 2>&1 && note "export check: PASS" || note "export check: FAIL (see train.log)"
}

stage_resume() {  # a run that resumes at step 10 from its checkpoint must repeat steps 11..20 of the first run bit for bit
  local args; args="$(train_common) --batch-size=4 --grad-accumulation=2 --eval-every-n-steps=0"
  "$BIN/train" $args --steps=20 --ckpt-interval=10 --checkpoint-dir=/tmp/llmq_ckpt/split --out-dir=/tmp/llmq_out/split \
    --log-file=/tmp/split_a.json >"$OUT/resume.log" 2>&1
  rm -rf /tmp/llmq_ckpt/split/step-00000020  # pretend the run stopped after step 10
  "$BIN/train" $args --steps=20 --ckpt-interval=10 --checkpoint-dir=/tmp/llmq_ckpt/split --out-dir=/tmp/llmq_out/split \
    --log-file=/tmp/split_b.json --continue >>"$OUT/resume.log" 2>&1
  python3 - "$SUMMARY" <<'PY' 2>&1 | tee -a "$OUT/resume.log"
import json, sys
def losses(p):
    return {r["step"]: (r["loss"], r["norm"]) for r in map(json.loads, open(p)) if r.get("kind") == "train"}
a, b = losses("/tmp/split_a.json"), losses("/tmp/split_b.json")
same = [s for s in b if s in a and a[s] == b[s]]
line = f"resume: steps {sorted(b)[0] if b else None}..{sorted(b)[-1] if b else None} after --continue; identical loss+norm at {len(same)}/{len(b)} steps"
print(line)
open(sys.argv[1], "a").write(line + ("  PASS\n" if b and len(same) == len(b) else "  FAIL\n"))
PY
}

bench_log_name() {  # model batch accum matmul grad [extra flags] -> bench_MODEL_BxACCUM_MATMUL_GRAD[_FLAGS-SLUG]
  local slug
  slug=$(printf '%s' "${*:6}" | sed -E 's/(^|[[:space:]])-+/\1/g; s/[^A-Za-z0-9.-]+/_/g; s/^_+|_+$//g' | cut -c1-80)
  echo "bench_$1_$2x$3_$4_$5${slug:+_$slug}"
}

stage_bench() {  # BENCH_CONFIGS="model batch accum matmul-dtype gradient-dtype [extra flags];..." overrides the list
  local d; d=$(shakespeare_tokens)
  local configs=${BENCH_CONFIGS:-"Qwen2.5-0.5B 32 1 bf16 bf16;Qwen2.5-0.5B 32 1 e4m3 bf16;Qwen2.5-0.5B 32 1 e4m3 e5m2;Qwen2.5-1.5B 16 1 bf16 bf16;Qwen2.5-1.5B 16 1 e4m3 e5m2"}
  local cfg log name n
  local -A taken=()  # log names of earlier rows: identical rows, or flags that sanitize alike, get _2, _3, ...
  IFS=';' read -ra list <<<"$configs"
  for cfg in "${list[@]}"; do
    [ -n "${cfg//[[:space:]]/}" ] || continue  # an empty entry (e.g. a trailing ';')
    set -- $cfg
    name=$(bench_log_name "$@"); n=1; log=$name
    while [ -n "${taken[$log]:-}" ]; do n=$((n + 1)); log="${name}_$n"; done
    taken[$log]=1
    log="$OUT/$log.log"
    "$BIN/train" --model=Qwen/$1 --from-scratch --train-file=$d/train.bin --eval-file=$d/eval.bin --model-dtype=bf16 \
      --batch-size=$2 --grad-accumulation=$3 --matmul-dtype=$4 --gradient-dtype=$5 "${@:6}" --steps=12 \
      --eval-every-n-steps=0 --ckpt-interval=0 --no-save-training-state \
      --out-dir=/tmp/llmq_out/bench --log-file=/tmp/bench.json >"$log" 2>&1
    note "bench $1 $4/$5 B=$2x$3 ${*:6}: $(grep -E '^\[T\]' "$log" | tail -n 1) $(grep -E 'error' "$log" | head -n 1)"
  done
}

stage_table() {  # scripts/bench.py's table with the PyTorch baseline; TABLE_MODELS / TABLE_DTYPES pick the rows
  local d; d=$(shakespeare_tokens)
  python3 scripts/bench.py --train "$BIN/train" --token-file "$d/train.bin" --models "${TABLE_MODELS:-Qwen2.5-0.5B,Qwen2.5-1.5B}" \
    --dtypes "${TABLE_DTYPES:-bf16,e4m3}" ${TABLE_ARGS:-} --pytorch --out "$OUT/table" --log-dir "$OUT/table_logs" \
    >"$OUT/table.log" 2>&1
  note "table stage rc=$?"
  cat "$OUT/table.md" >>"$SUMMARY" 2>/dev/null || tail -n 20 "$OUT/table.log" >>"$SUMMARY"
}

stage_memory() {  # MEMORY_CONFIGS="model batch accum [flags];...": trains MEMORY_STEPS steps under the flags (e.g.
  # --memory-limit=16GiB --auto-fit) and reports the auto-fit choice, the planned device total and the speed
  local d; d=$(shakespeare_tokens)
  local configs=${MEMORY_CONFIGS:-"Qwen2.5-7B 4 8 --memory-limit=16GiB --auto-fit"}
  local cfg log i=0
  IFS=';' read -ra list <<<"$configs"
  for cfg in "${list[@]}"; do
    [ -n "${cfg//[[:space:]]/}" ] || continue
    set -- $cfg
    i=$((i + 1)); log="$OUT/memory_$i.log"
    echo "$cfg" >"$log"
    "$BIN/train" --model=Qwen/$1 --from-scratch --train-file=$d/train.bin --eval-file=$d/eval.bin --model-dtype=bf16 \
      --batch-size=$2 --grad-accumulation=$3 "${@:4}" --steps=${MEMORY_STEPS:-6} --eval-every-n-steps=0 \
      --ckpt-interval=0 --no-save-training-state --out-dir=/tmp/llmq_out/memory --log-file=/tmp/memory.json >>"$log" 2>&1
    note "memory $i: $cfg"
    note "  $(grep -E '^--auto-fit' "$log" | head -n 1)"
    note "  $(grep -E 'Device (total|peak)|Pinned host' "$log" | tr -s ' ' | tr '\n' ' ')"
    note "  $(grep -E '^\[T\]' "$log" | tail -n 1) $(grep -E 'error' "$log" | head -n 1)"
  done
}

stage_fp8quality() {  # 300 steps of 0.5B from scratch on tiny Shakespeare: bf16 vs e4m3 vs e4m3+e5m2, same seed
  local d; d=$(shakespeare_tokens)
  local m g
  for mg in "bf16 bf16" "e4m3 bf16" "e4m3 e5m2"; do
    set -- $mg
    "$BIN/train" --model=Qwen/Qwen2.5-0.5B --from-scratch --train-file=$d/train.bin --eval-file=$d/eval.bin \
      --model-dtype=bf16 --matmul-dtype=$1 --gradient-dtype=$2 --batch-size=8 --seq-len=512 --steps=300 \
      --learning-rate=6e-4 --warmup=20 --eval-every-n-steps=50 --ckpt-interval=0 --no-save-training-state \
      --out-dir=/tmp/llmq_out/fp8q --log-file="$OUT/fp8quality_$1_$2.json" >"$OUT/fp8quality_$1_$2.log" 2>&1
    note "fp8quality $1/$2: $(grep -E '^\[V\]' "$OUT/fp8quality_$1_$2.log" | tail -n 1) $(grep -E '^\[T\]' "$OUT/fp8quality_$1_$2.log" | tail -n 1 | cut -c1-90) $(grep -m1 error "$OUT/fp8quality_$1_$2.log")"
  done
}

stage_errors() {  # bad requests must end in one clear message and a non-zero exit, never a crash
  local d; d=$(shakespeare_tokens)
  local base="--model=Qwen/Qwen2.5-0.5B --from-scratch --train-file=$d/train.bin --eval-file=$d/eval.bin --steps=3 \
    --eval-every-n-steps=0 --ckpt-interval=0 --no-save-training-state --out-dir=/tmp/llmq_out/errors --log-file=/tmp/errors.json"
  local name args rc
  while IFS='|' read -r name args; do
    "$BIN/train" $base $args >"$OUT/errors_$name.log" 2>&1; rc=$?
    note "errors/$name: rc=$rc $(grep -m1 -E '^error' "$OUT/errors_$name.log" | cut -c1-220)"
  done <<'CASES'
memory_limit|--batch-size=8 --memory-limit=4GiB
seq_too_long|--seq-len=40000 --batch-size=1
text_as_tokens|--train-file=scripts/data/tinyshakespeare.txt
CASES
  "$BIN/train" --model=Qwen/Qwen2.5-0.5B --from-scratch --train-file=$d/train.bin --eval-file=/nonexistent.bin \
    --eval-every-n-steps=0 --steps=2 --batch-size=4 --ckpt-interval=0 --no-save-training-state --log-gpu-util=1 \
    --out-dir=/tmp/llmq_out/noeval --log-file=/tmp/noeval.json >"$OUT/errors_noeval.log" 2>&1
  note "no eval file, no periodic eval: rc=$? (expect 0); gpu records: $(grep -c '"kind":"gpu"' /tmp/noeval.json)"
  # 14B: weights, gradients and Adam state need ~176 GB, more than the GPU has: the real out-of-memory path
  "$BIN/train" --model=Qwen/Qwen2.5-14B --from-scratch --train-file=$d/train.bin --eval-file=$d/eval.bin --steps=1 \
    --batch-size=1 --out-dir=/tmp/llmq_out/oom --log-file=/tmp/oom.json >"$OUT/errors_oom.log" 2>&1
  note "errors/oom_device: rc=$? $(grep -m1 -E '^error' "$OUT/errors_oom.log" | cut -c1-220)"
  "$BIN/train" $base --model-dtype=fp32 --batch-size=2 --seq-len=256 --steps=5 >"$OUT/errors_fp32.log" 2>&1
  note "fp32 run: rc=$? $(grep -E '^\[T\]' "$OUT/errors_fp32.log" | tail -n 1)"
  for c in 1 4; do
    "$BIN/train" $base --batch-size=4 --steps=5 --lmhead-chunks=$c >"$OUT/errors_chunks$c.log" 2>&1
    note "lmhead-chunks=$c: $(grep -E '^\[T\]' "$OUT/errors_chunks$c.log" | tail -n 1 | cut -c1-80)"
  done
}

stage_profile() {  # per-kernel GPU time of training steps 2-3 of 0.5B (Nsight Compute, real clocks); PROFILE_ARGS adds flags
  local d; d=$(shakespeare_tokens)
  # train starts the profiler after its first step (setup and matmul autotuning stay out)
  ncu --metrics gpu__time_duration.sum --csv --clock-control none --profile-from-start off --log-file "$OUT/profile.csv" \
    "$BIN/train" --model=Qwen/Qwen2.5-0.5B --from-scratch --train-file=$d/train.bin --eval-file=/nonexistent.bin \
    --model-dtype=bf16 --batch-size=16 --grad-accumulation=1 --steps=3 --eval-every-n-steps=0 --ckpt-interval=0 \
    --no-save-training-state --out-dir=/tmp/llmq_out/profile --log-file=/tmp/profile.json ${PROFILE_ARGS:-} \
    >"$OUT/profile.log" 2>&1
  python3 - "$OUT/profile.csv" <<'PY' | tee -a "$SUMMARY"
import csv, collections, re, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
head = rows[0]; name_i, val_i = head.index("Kernel Name"), head.index("Metric Value")
grid_i = head.index("Grid Size")
total = collections.defaultdict(float); count = collections.Counter()
for r in rows[1:]:
    try: t = float(r[val_i].replace(",", ""))
    except ValueError: continue
    name = re.sub(r"^void ", "", r[name_i]).split("(")[0][:64]
    if "nvjet" in name or "gemm" in name: name = f"{name} grid{r[grid_i]}"  # tells the GEMM shapes apart
    total[name] += t; count[name] += 1
all_ns = sum(total.values())
print(f"profile: {all_ns / 1e6:.1f} ms of kernel time (steps 2 and 3 of B=16 T=1024)")
for name, t in sorted(total.items(), key=lambda kv: -kv[1])[:32]:
    print(f"  {t / all_ns * 100:5.1f}%  {t / 1e6:8.2f} ms  {count[name]:5d}x  {name}")
PY
}

stage_scaling() {  # cuBLASLt's FP8 scaling modes: the scale layout each reads, and speed at the Qwen2.5 shapes
  "$BIN/fp8_scaling_probe" >"$OUT/scaling.log" 2>&1
  note "scaling probe rc=$?"
  grep -E "^(device|layout|speed)" "$OUT/scaling.log" >>"$SUMMARY"
}

stage_quickstart() {
  bash scripts/quickstart.sh >"$OUT/quickstart.log" 2>&1
  local rc=$?
  grep -E "^\[V\]|error|quickstart:" "$OUT/quickstart.log" | tail -n 6 >>"$SUMMARY"
  grep -E "^\[T\]" "$OUT/quickstart.log" | tail -n 2 >>"$SUMMARY"
  note "quickstart stage rc=$rc"
}

for s in $STAGES; do
  start=$(date +%s)
  "stage_$s"
  note "stage $s took $(( $(date +%s) - start )) s"
done
# The GPU machine returns few files: pack the logs, keep the summary and the plot loose.
(cd "$OUT" && tar czf /tmp/llmq_logs.tar.gz --exclude=summary.txt --exclude='*.png' . 2>/dev/null;
  find . -maxdepth 1 -type f ! -name summary.txt ! -name '*.png' -delete; mv /tmp/llmq_logs.tar.gz logs.tar.gz)
echo "=== summary"; cat "$SUMMARY"
