#!/usr/bin/env bash
# One prepared GPU check for a fresh machine, sized for a single device call of <= 8 minutes.
#
#   bash benchmarks/gpu_check.sh [RESULTS_DIR]          # default: $OUT/gpu_check, else ./gpu_check_out
#   GPU_CHECK_SMOKE=1 bash benchmarks/gpu_check.sh DIR   # CPU smoke run: GPU parts skipped, toy sizes
#
# In this order, each part under its own time limit, every result written as soon as it exists:
#   0. install + build: pip install torch==2.14.1 torchvision==0.29.1 ninja (GPU_CHECK_PIP=0 skips;
#      a machine without a registry keeps its torch and says so), then the CUDA build of fastep._C
#      (FORCE_CUDA=1, TORCH_CUDA_ARCH_LIST=9.0) via `pip install --no-build-isolation -e .`,
#      falling back to `setup.py build_ext --inplace`;
#   1. the CUDA/Triton tests, every item listed passed/failed/skipped (-rA), tracebacks kept as
#      they happen (FASTEP_TEST_FAILLOG), items the time limit cut off listed as not run;
#   2. the zoo's training steps: DeepI2I phase 2 at the gpu and paper presets, BridgeGAN at the
#      paper preset in fp32 and bf16 (benchmarks/deepi2i_step.py, bridgegan_step.py; zoo.jsonl);
#   3. Ours v3 at batch 8, 256 x 256: eager fp32 (true fp32), eager bf16, the compiled fast path,
#      and the fast path with CUDA graphs (benchmarks/gpu_check.py train);
#   4. the conv micro-benchmark of the exact rewrites, bf16 channels_last (conv_rewrites.py);
#   5. gram / style_loss / pairwise, PerceptualLoss and LPIPS against their eager versions
#      (benchmarks/test_bench_gram.py, test_bench_losses.py at their batch-8 cases).
# The results folder holds at most 8 files (what a device call brings back): env.json, run.log,
# tests.log (with the failure tracebacks folded in), train.jsonl, zoo.jsonl, conv.jsonl,
# losses.jsonl, summary.md.  Copy it to benchmarks/results/<device>-<date>/ and commit it.
#
# Time limits (seconds): T_INSTALL (60), T_BUILD (90), T_TESTS (80), T_ZOO (90), T_TRAIN (170),
# T_CONV (30), T_LOSSES (35); GPU_CHECK_BUDGET (465) caps their sum: a part never runs past the budget, and
# one that finds under 10 s left is recorded as not run.  GPU_CHECK_TESTS (pytest paths, default
# tests), GPU_CHECK_LOSSES_K (-k filter of the loss benchmarks), TRAIN_STEPS (10).
# GPU_CHECK_XDIST (pytest-xdist workers for the tests, 4; 1 = none).
# GPU_CHECK_PARTS (default "tests zoo train conv losses") picks parts; two more exist for longer
# sessions: "kernels" (every benchmark suite but training, records in kernels.jsonl) and "table"
# (the full `fastep bench` training table, in table/).
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=${GPU_CHECK_SMOKE:-0}
R=${1:-${OUT:+$OUT/gpu_check}}
R=${R:-gpu_check_out}
mkdir -p "$R"
R=$(cd "$R" && pwd)
LOG="$R/run.log"
: > "$LOG"
export PYTHONUNBUFFERED=1 FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
export FASTEP_CACHE=${FASTEP_CACHE:-$PWD/.fastep_cache}
PY=${PYTHON:-python3}
say() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$LOG"; }
# part NAME LIMIT CMD...: run under its own time limit, output to run.log (and the console)
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET:-465}
PARTS=" ${GPU_CHECK_PARTS:-tests zoo train conv losses} "
want() { [[ "$PARTS" == *" $1 "* ]]; }
part() {
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  local left=$(( BUDGET - (t0 - START) - 5 ))
  if [ "$left" -lt 10 ]; then say "$name: NOT RUN (budget of $BUDGET s used up)"; return 0; fi
  [ "$limit" -gt "$left" ] && limit=$left
  say "$name (limit ${limit} s)"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  local msg="rc=$rc"; [ "$rc" = 124 ] || [ "$rc" = 137 ] && msg="TIME LIMIT ($limit s)"
  say "$name: $msg after $(( $(date +%s) - t0 )) s"
  return 0
}

if [ "$SMOKE" = 1 ]; then
  say "smoke mode: CPU, GPU parts skipped, toy sizes"
  T_TESTS=${T_TESTS:-60} T_TRAIN=${T_TRAIN:-120} T_CONV=${T_CONV:-40} T_LOSSES=${T_LOSSES:-60}
  BUDGET=${GPU_CHECK_BUDGET:-300}
fi

# 0. install + build -----------------------------------------------------------------------
[ -e fastep/kernels ] || ln -s ../kernels fastep/kernels   # source-tree layout of the package
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if [ "$SMOKE" != 1 ]; then
  if [ "${GPU_CHECK_PIP:-1}" = 1 ]; then
    part install "${T_INSTALL:-60}" $PY -m pip install -q torch==2.14.1 torchvision==0.29.1 ninja
  fi
  part build "${T_BUILD:-90}" bash -c "$PY -m pip install -q --no-build-isolation --no-deps -e . \
    || { echo 'pip -e failed; building in place'; $PY setup.py build_ext --inplace; }"
fi
part env 60 $PY benchmarks/gpu_check.py env --out "$R"

# 1. CUDA tests (on CPU they are all skipped: the smoke run checks the listing) --------------
MARK="cuda or triton"
TIMEOUT_OPT=""
$PY -c "import pytest_timeout" 2>/dev/null && TIMEOUT_OPT="--timeout=${PER_TEST_TIMEOUT:-60}"
# several workers on the one GPU: the Triton/inductor compiles that dominate these tests run on the CPUs
XDIST_OPT=""
[ "$SMOKE" != 1 ] && [ "${GPU_CHECK_XDIST:-4}" -gt 1 ] && $PY -c "import xdist" 2>/dev/null \
  && XDIST_OPT="-n ${GPU_CHECK_XDIST:-4}"
if want tests; then
  $PY -m pytest --collect-only -q -m "$MARK" -p no:cacheprovider ${GPU_CHECK_TESTS:-tests} \
    > "$R/tests_collected.txt" 2>&1
  part tests "${T_TESTS:-80}" bash -c "FASTEP_TEST_FAILLOG='$R/tests_failures.log' $PY -m pytest -v -rA \
    -m '$MARK' -p no:cacheprovider $TIMEOUT_OPT $XDIST_OPT ${GPU_CHECK_TESTS:-tests} > '$R/tests.log' 2>&1; \
    tail -3 '$R/tests.log'"
fi
# 2. zoo training steps: DeepI2I phase 2 (gpu and paper presets), BridgeGAN (paper, fp32 and bf16) --
if want zoo; then
  if [ "$SMOKE" = 1 ]; then
    ZOO="$PY benchmarks/deepi2i_step.py --preset cpu --device cpu --steps 1 --warmup 0 --jsonl '$R/zoo.jsonl'; \
      $PY benchmarks/bridgegan_step.py --preset cpu --device cpu --steps 1 --warmup 0 --jsonl '$R/zoo.jsonl'"
  else
    ZOO="$PY benchmarks/deepi2i_step.py --preset gpu --device cuda --steps 5 --warmup 2 --jsonl '$R/zoo.jsonl'; \
      $PY benchmarks/deepi2i_step.py --preset paper --device cuda --steps 3 --warmup 1 --jsonl '$R/zoo.jsonl'; \
      $PY benchmarks/bridgegan_step.py --preset paper --device cuda --steps 3 --warmup 1 --jsonl '$R/zoo.jsonl'; \
      $PY benchmarks/bridgegan_step.py --preset paper --device cuda --amp --steps 3 --warmup 1 --jsonl '$R/zoo.jsonl'"
  fi
  part zoo "${T_ZOO:-90}" bash -c "$ZOO"
fi

# 3. Ours v3 training step ------------------------------------------------------------------
if want train; then
  if [ "$SMOKE" = 1 ]; then
    part train "${T_TRAIN}" $PY benchmarks/gpu_check.py train --out "$R" --smoke --batch 2 --resolution 64 \
      --steps 1 --warmup 0
  else
    part train "${T_TRAIN:-170}" $PY benchmarks/gpu_check.py train --out "$R" --batch 8 --resolution 256 \
      --steps "${TRAIN_STEPS:-10}" --warmup 2
  fi
fi

# 4. conv rewrites --------------------------------------------------------------------------
if want conv; then
  if [ "$SMOKE" = 1 ]; then
    part conv "${T_CONV}" $PY benchmarks/conv_rewrites.py --device cpu --batch 2 --resolution 32 --reps 2 \
      --warmup 0 --out "$R/conv.jsonl"
  else
    part conv "${T_CONV:-30}" $PY benchmarks/conv_rewrites.py --device cuda --batch 8 --resolution 256 \
      --dtype bfloat16 --reps 20 --out "$R/conv.jsonl"
  fi
fi

# 5. losses against their eager versions ----------------------------------------------------
DEV=cuda; [ "$SMOKE" = 1 ] && DEV=cpu
if want losses; then
  K=${GPU_CHECK_LOSSES_K:-"(gram or style_loss or pairwise or perceptual) and (-0- or -3-) or lpips"}
  [ "$SMOKE" = 1 ] && K=${GPU_CHECK_LOSSES_K:-"test_bench_gram or test_lpips and alex"}
  part losses "${T_LOSSES:-35}" bash -c "FASTEP_BENCH_JSONL='$R/losses.jsonl' $PY -m pytest -q \
    benchmarks/test_bench_gram.py benchmarks/test_bench_losses.py -k '$K' --fastep-device $DEV \
    -p no:cacheprovider --benchmark-disable-gc 2>&1 | tail -15"
fi

# optional longer parts ---------------------------------------------------------------------
if want kernels; then
  part kernels "${T_KERNELS:-400}" bash -c "FASTEP_BENCH_JSONL='$R/kernels.jsonl' $PY -m pytest -q benchmarks \
    --ignore=benchmarks/test_bench_training.py --fastep-device $DEV -p no:cacheprovider \
    --benchmark-disable-gc 2>&1 | tail -30"
fi
if want table; then
  part table "${T_TABLE:-500}" $PY -m fastep bench --out "$R/table" ${TABLE_ARGS:-}
fi
touch "$R/losses.jsonl" "$R/conv.jsonl" "$R/train.jsonl" "$R/zoo.jsonl" "$R/tests_failures.log"

# summary -----------------------------------------------------------------------------------
part summary 60 $PY benchmarks/gpu_check.py summary --out "$R"
# fold the collected test list into tests.log (8 files at most come back from a device call)
if [ -f "$R/tests_collected.txt" ]; then
  { echo; echo "==== collected ($MARK)"; cat "$R/tests_collected.txt"; } >> "$R/tests.log"
  rm -f "$R/tests_collected.txt"
fi
# and the failure tracebacks (zoo.jsonl took their slot)
if [ -s "$R/tests_failures.log" ]; then
  { echo; echo "==== failure tracebacks (FASTEP_TEST_FAILLOG)"; cat "$R/tests_failures.log"; } >> "$R/tests.log"
fi
rm -f "$R/tests_failures.log"
say "done: results in $R ($(ls "$R" | wc -l) files)"
exit 0
