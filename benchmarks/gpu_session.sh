#!/usr/bin/env bash
# One GPU session: build fastep._C in place, report the environment, run the CUDA/Triton tests and
# the benchmark suites, and leave logs + results under $OUT (default ./out).
#   bash benchmarks/gpu_session.sh [build] [tests] [kernels] [training] [quick-training]
# Meant for a bare GPU machine with torch + triton + nvcc preinstalled; wheels of missing pure-
# Python packages (lpips) may be carried in .whl/.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
mkdir -p "$OUT"
parts=("$@"); [ ${#parts[@]} -eq 0 ] && parts=(build tests kernels)
has() { local p; for p in "${parts[@]}"; do [ "$p" = "$1" ] && return 0; done; return 1; }
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# Source-tree mode: kernels/ is installed as fastep.kernels by setup.py; mirror that here.
[ -e fastep/kernels ] || ln -s ../kernels fastep/kernels
export PYTHONPATH=$PWD:${PYTHONPATH}
if has build; then
  echo "== build fastep._C (FORCE_CUDA=1) =="
  start=$(date +%s)
  FORCE_CUDA=1 python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
  echo "build: $(( $(date +%s) - start )) s"
fi
python3 -m fastep info | tee "$OUT/info.txt"
if has tests; then
  # -rA + junit xml: every selected item with its outcome (skips with their reason) in the log
  echo "== tests on the GPU machine (CUDA + Triton-on-CUDA) =="
  FASTEP_TEST_FAILLOG="$OUT/tests_gpu_failures.log" timeout "${TESTS_TIMEOUT:-400}" python3 -m pytest ${TESTS:-tests} -v -rA --junitxml="$OUT/tests_gpu.xml" -m "cuda or triton" -p no:cacheprovider --timeout=${PER_TEST_TIMEOUT:-90} --durations=15 2>&1 | tee "$OUT/tests_gpu.log" | tail -25
fi
if has kernels; then
  echo "== kernel benchmarks =="
  FASTEP_BENCH_JSONL="$OUT/bench_records.jsonl" timeout "${BENCH_TIMEOUT:-400}" python3 -m pytest ${BENCHES:-benchmarks} -v -p no:cacheprovider --ignore=benchmarks/test_bench_training.py ${BENCH_K:+-k "$BENCH_K"} \
    --fastep-results "$OUT" --benchmark-disable-gc 2>&1 | tee "$OUT/bench_kernels.log" | tail -60
fi
if has training; then
  echo "== training-time table =="
  timeout "${TRAIN_TIMEOUT:-500}" python3 -m fastep bench --out "$OUT" ${TRAIN_ARGS:-} 2>&1 | tee "$OUT/bench_training.log" | tail -40
fi
exit 0
