#!/usr/bin/env bash
# One run on the GPU machine (an offline H200 with torch, nvcc, ninja, pytest, matplotlib
# preinstalled), under 10 minutes: build the CUDA extension, run the whole test suite on CUDA,
# run the GPU benchmark presets. Everything lands in the output folder given as the argument
# (build.log, tests.log, bench.log, the results, summary.txt) and the results also in
# benchmarks/results/ (named by date and GPU).
#   bash benchmarks/run_gpu.sh OUT_DIR [--repeats N]
set -uo pipefail
OUT=${1:?usage: run_gpu.sh OUT_DIR [--repeats N]}
shift
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
summary() { echo "$*" | tee -a "$OUT/summary.txt"; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
summary "GPU: $(tail -1 "$OUT/gpu.txt")"

start=$SECONDS
TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" FUSED_RNN_PTXAS_VERBOSE=1 \
  pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1
build_rc=$?
summary "build: rc=$build_rc in $((SECONDS - start)) s"
[ $build_rc -eq 0 ] || { tail -40 "$OUT/build.log"; exit 1; }
python3 .ci/ptxas_summary.py "$OUT/build.log" > "$OUT/ptxas.txt"
python3 -c "import fused_rnn, json; print(json.dumps(fused_rnn.build_info()))" | tee -a "$OUT/summary.txt"

start=$SECONDS
python3 -m pytest -q -p no:cacheprovider tests >"$OUT/tests.log" 2>&1
tests_rc=$?
summary "tests: rc=$tests_rc in $((SECONDS - start)) s: $(tail -1 "$OUT/tests.log")"

start=$SECONDS
python3 benchmarks/suite.py --preset gpu --device cuda --out "$OUT" "$@" >"$OUT/bench.log" 2>&1
bench_rc=$?
summary "benchmarks: rc=$bench_rc in $((SECONDS - start)) s"
grep -E "fused_rnn|torch.nn " "$OUT/bench.log" | tail -60 >> "$OUT/summary.txt"
cat "$OUT/summary.txt"
exit $(( tests_rc != 0 || bench_rc != 0 ))
