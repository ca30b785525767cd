#!/usr/bin/env bash
# gpu_bench.sh: issue 5's GPU measurement, ours vs HF PEFT, in one go.
#
# Runs `python -m prompt_tuning.bench` for the issue's targets at batch 32,
# inputs 512, prompt 100, targets 8 (random weights, synthetic tokens), most
# important first, each invocation under its own time limit, the whole
# under BUDGET_S seconds (default 480): what does not fit is logged as
# skipped. Needs jax, flax, optax, torch, transformers and peft; no
# TensorFlow, SeqIO or gin. Ask for an H200: PEFT's XL step needs ~95 GB.
#
# Required: OUT (a writable folder; the device tool sets it).
# Optional: BUDGET_S (seconds, default 480), PYTHON (default python3),
#   STEPS (timed steps per run, default 8), PEER_PYTHON (an interpreter
#   with torch/transformers/peft, default PYTHON), SMOKE=1 (tiny presets and
#   shapes: checks the script itself on a CPU in about three minutes),
#   ONLY=name,name (run only these steps, e.g. the ones a first call
#   skipped: xl base xxl methods xl_attention xl_remat xxl_peft hf_full
#   xl_frozen_f32 xxl_selective base_xla methods_ours decoder).
# Writes: $OUT/bench.jsonl (one JSON line per run, then ratio lines),
#   $OUT/log.txt (all output), $OUT/device.txt (GPU, driver, versions).
# Run (repository root): OUT=/tmp/bench bash launch/gpu_bench.sh
# Then: docs/performance.md says how to read bench.jsonl into its table.

set -uo pipefail
: "${OUT:?set OUT to a writable folder}"
BUDGET_S="${BUDGET_S:-480}"
PY="${PYTHON:-python3}"
STEPS="${STEPS:-8}"
cd "$(dirname "$0")/.." || exit 1
mkdir -p "$OUT"
START=$(date +%s)
RESULTS="$OUT/bench.jsonl"
LOG="$OUT/log.txt"
SHAPES=(--batch 32 --inputs 512 --prompt 100 --targets 8
        --steps "$STEPS" --warmup 2)
XL=t5_1_1_xl BASE=t5_1_1_base XXL=t5_1_1_xxl
# The decoder-only step (issue 28): Llama 3.2 1B's shapes, bfloat16.
DECODER=(--preset llama3_2_1b --batch 32 --inputs 512 --prompt 100
         --targets 8 --steps "$STEPS" --warmup 2 --dtype bfloat16
         --frozen_dtype bfloat16)
if [[ "${SMOKE:-0}" == 1 ]]; then
  SHAPES=(--batch 2 --inputs 8 --prompt 2 --targets 2 --steps 2 --warmup 1
          --matmul_size 256)
  XL=t5_1_1_tiny BASE=t5_1_1_tiny XXL=t5_1_1_tiny
  DECODER=(--layers 2 --width 64 --heads 4 --kv_heads 2 --head_dim 16
           --mlp 128 --vocab 512 --batch 2 --inputs 8 --prompt 2
           --targets 2 --steps 2 --warmup 1)
fi
PEER=()
[[ -n "${PEER_PYTHON:-}" ]] && PEER=(--peer_python "$PEER_PYTHON")

log() { echo "[$(date -u +%H:%M:%S) +$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }

{
  echo "host $(hostname) $(date -u +%Y-%m-%dT%H:%M:%SZ) commit $(git rev-parse --short HEAD 2>/dev/null)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  "$PY" -c 'import sys, jax, flax, optax, torch, transformers, peft
print("python", sys.version.split()[0], "jax", jax.__version__, "flax",
      flax.__version__, "optax", optax.__version__, "torch", torch.__version__,
      "transformers", transformers.__version__, "peft", peft.__version__)
print(jax.devices())' 2>&1
} | tee "$OUT/device.txt" | tee -a "$LOG"

# limit_for NAME LIMIT_S: prints the step's time limit, cut to the budget
# left; fails (after logging a skip) when the step is not to run.
limit_for() {
  local name=$1 limit=$2
  [[ -n "${ONLY:-}" && ",$ONLY," != *",$name,"* ]] && return 1
  local left=$(( BUDGET_S - ($(date +%s) - START) ))
  if (( left < 45 )); then
    log "skip $name: ${left}s of the budget left" >&2
    echo "{\"kind\": \"skipped\", \"name\": \"$name\"}" >> "$RESULTS"
    return 1
  fi
  (( limit > left )) && limit=$left
  echo "$limit"
}

# bench NAME LIMIT_S ARGS...: one invocation, cut to the budget left.
bench() {
  local name=$1 limit
  limit=$(limit_for "$1" "$2") || return
  shift 2
  log "start $name (limit ${limit}s): $*"
  timeout -k 10 "$limit" "$PY" -m prompt_tuning.bench "${SHAPES[@]}" \
    "${PEER[@]}" --run_timeout "$limit" --output "$RESULTS" "$@" \
    >> "$LOG" 2>&1
  log "end $name (exit $?)"
}

# bench_decoder NAME LIMIT_S: the decoder-only prompt step against PEFT's
# CAUSAL_LM prompt tuning (python -m prompt_tuning.bench.decoder), its JSON
# lines appended to the results.
bench_decoder() {
  local name=$1 limit
  limit=$(limit_for "$1" "$2") || return
  log "start $name (limit ${limit}s): ${DECODER[*]}"
  timeout -k 10 "$limit" "$PY" -m prompt_tuning.bench.decoder \
    "${DECODER[@]}" --peer peft "${PEER[@]}" >> "$RESULTS" 2>> "$LOG"
  log "end $name (exit $?)"
}

# 1. XL: prompt >= 3.5x PEFT's tokens/s at <= 0.25x its memory; our prompt
#    step <= 0.70x our model step.
bench xl 210 --preset "$XL" --mode prompt,model --scan \
  --remat dots_with_no_batch_dims_saveable --attention fused --peer peft
# 2. Base: >= 5x PEFT's tokens/s.
bench base 110 --preset "$BASE" --mode prompt,model --attention fused \
  --peer peft
# 3. XXL prompt at batch 32 (PEFT runs out of memory): >= 50% MFU.
bench xxl 120 --preset "$XXL" --mode prompt --scan --remat full \
  --attention fused
# 3b. The other methods against PEFT's at Base (scanned: one compiled layer
#    keeps each run's compile short): P-tuning, IA3, LoRA (r 8, q and v) and
#    prefix tuning in PEFT's layout (decoder self-attention only: the
#    like-for-like row; our default layout is step 7).
bench methods 150 --preset "$BASE" --method p_tuning,ia3,lora,prefix \
  --prefix_layout peft --scan --attention fused --peer peft
# 3c. A decoder-only LM's prompt step against PEFT's (Llama 3.2 1B shapes).
bench_decoder decoder 150
# 4. What each option buys, at XL prompt: fused attention (vs the reference
#    path), the remat policy (none may not fit an 80 GB card), bfloat16
#    frozen weights.
bench xl_attention 80 --preset "$XL" --mode prompt --scan \
  --remat dots_with_no_batch_dims_saveable --attention xla
bench xl_remat 120 --preset "$XL" --mode prompt --scan --remat full,none \
  --attention fused
# 5. The references the issue quotes: PEFT at XXL (out of memory in the
#    issue), HF full fine-tuning.
bench xxl_peft 60 --preset "$XXL" --mode '' --peer peft
bench hf_full 90 --preset "$XL,$BASE" --mode '' --peer hf_full
# 6. Lower priority: float32 frozen weights; XXL with selective remat
#    (needs ~100 GB: H200 only); Base without fused attention.
bench xl_frozen_f32 70 --preset "$XL" --mode prompt --scan \
  --remat dots_with_no_batch_dims_saveable --attention fused \
  --frozen_dtype float32
bench xxl_selective 90 --preset "$XXL" --mode prompt --scan \
  --remat dots_with_no_batch_dims_saveable --attention fused
bench base_xla 60 --preset "$BASE" --mode prompt --attention xla
# 7. Ours only, at Base: deep prompts (no PEFT peer) and prefix tuning in
#    our default layout (encoder self, decoder self and cross attention).
bench methods_ours 70 --preset "$BASE" --method deep_prompt,prefix \
  --prefix_layout li_liang --scan --attention fused

log "done; $(grep -c '"kind": "run"' "$RESULTS" 2>/dev/null || echo 0) run lines in $RESULTS"
