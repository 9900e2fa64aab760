#!/usr/bin/env bash
# One run on the GPU machine (an offline H200 with torch, nvcc, ninja, pytest, matplotlib
# preinstalled), under 10 minutes: build the CUDA extension, run the whole test suite on CUDA
# (then the layer tests again with the persistent kernels switched on), compute-sanitizer on the
# tensor-core persistent kernel, measure the per-step barriers and a tensor-core recurrent step
# (benchmarks/gpu_micro, seconds), run the GPU benchmark preset for what is left of the time.
# Everything lands in the output folder given as the argument (build.log, ptxas.txt, tests.log,
# tests-persistent.log, sanitizer-*.log, barriers.md, recurrent_step.md, bench.log, the results,
# summary.txt) and the results also in benchmarks/results/ (named by date and GPU).
#   bash benchmarks/run_gpu.sh OUT_DIR [suite.py arguments, e.g. --repeats N]
# RUN_GPU_SECONDS (default 540) is the whole run's target; the suite gets what the build and the
# tests leave of it (--budget-s).
set -uo pipefail
OUT=${1:?usage: run_gpu.sh OUT_DIR [suite.py arguments]}
shift
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
summary() { echo "$*" | tee -a "$OUT/summary.txt"; }
TOTAL=${RUN_GPU_SECONDS:-540}
begin=$SECONDS

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
summary "GPU: $(tail -1 "$OUT/gpu.txt")"

start=$SECONDS
TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" FUSED_RNN_PTXAS_VERBOSE=1 \
  MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
  python3 -m pip install -v --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1
build_rc=$?
summary "build: rc=$build_rc in $((SECONDS - start)) s"
[ $build_rc -eq 0 ] || { tail -40 "$OUT/build.log"; exit 1; }
python3 .ci/ptxas_summary.py "$OUT/build.log" > "$OUT/ptxas.txt"
python3 -c "import fused_rnn, json; print(json.dumps(fused_rnn.build_info()))" | tee -a "$OUT/summary.txt"

# The suite's CUDA tests are independent: spread them over workers where pytest-xdist is there.
# A test that hangs is stopped (pytest-timeout, where there) and so is a whole pass (timeout), so
# that the benchmarks still get their time. Each worker gets its share of the cores: 8 workers
# with a thread per core each oversubscribe the CPU, and the CPU tests' per-step thread barriers
# (ours and ATen's) then crawl (one test took > 120 s).
PARALLEL=()
TEST_THREADS=$(nproc)
if python3 -c "import xdist" 2>/dev/null; then
  PARALLEL+=(-n 8 -v)  # -v: each result as it lands
  TEST_THREADS=$(( $(nproc) / 8 > 1 ? $(nproc) / 8 : 1 ))
fi
python3 -c "import pytest_timeout" 2>/dev/null && PARALLEL+=(--timeout 120)
start=$SECONDS
OMP_NUM_THREADS=$TEST_THREADS timeout 240 python3 -m pytest -rfE -p no:cacheprovider \
  "${PARALLEL[@]}" tests >"$OUT/tests.log" 2>&1
tests_rc=$?
summary "tests: rc=$tests_rc in $((SECONDS - start)) s: $(tail -1 "$OUT/tests.log")"
grep -E "^(FAILED|ERROR) " "$OUT/tests.log" >> "$OUT/summary.txt"

start=$SECONDS
OMP_NUM_THREADS=$TEST_THREADS timeout 120 python3 -m pytest -rfE -p no:cacheprovider \
  "${PARALLEL[@]}" --persistent-kernels \
  tests/test_sequence.py tests/test_modules.py tests/test_persistent.py \
  >"$OUT/tests-persistent.log" 2>&1
persistent_rc=$?
summary "layer tests with --persistent-kernels: rc=$persistent_rc in $((SECONDS - start)) s: \
$(tail -1 "$OUT/tests-persistent.log")"
grep -E "^(FAILED|ERROR) " "$OUT/tests-persistent.log" >> "$OUT/summary.txt"

# compute-sanitizer on the tensor-core persistent kernel (unmeasured until this run): memcheck on
# both cells and dtypes at H=48 B=9 (partial n-tiles), racecheck (shared memory) on the LSTM's.
SANITIZER=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
for tool in memcheck racecheck; do
  start=$SECONDS
  select="tensor_core_kernel_matches and H48"
  [ $tool = racecheck ] && select="$select and lstm"
  timeout 90 "$SANITIZER" --tool $tool --error-exitcode 3 --kernel-name kns=tensor_core_layer \
    python3 -m pytest -q -p no:cacheprovider tests/test_persistent.py -k "$select" \
    >"$OUT/sanitizer-$tool.log" 2>&1
  summary "compute-sanitizer $tool (tensor-core kernel): rc=$? in $((SECONDS - start)) s: \
$(grep -E "ERROR SUMMARY|passed|failed" "$OUT/sanitizer-$tool.log" | tail -2 | tr '\n' ' ')"
done

# The microbenchmarks that decide the persistent kernels' design (benchmarks/gpu_micro).
for micro in barriers recurrent_step; do
  start=$SECONDS
  nvcc -O3 -std=c++17 -arch=sm_90a -o "$OUT/$micro" "benchmarks/gpu_micro/$micro.cu" \
    >"$OUT/$micro-build.log" 2>&1 && timeout 60 "$OUT/$micro" >"$OUT/$micro.md" 2>&1
  summary "$micro: rc=$? in $((SECONDS - start)) s"
  cat "$OUT/$micro.md" >> "$OUT/summary.txt" 2>/dev/null
  rm -f "$OUT/$micro"
done

start=$SECONDS
budget=$(( TOTAL - (SECONDS - begin) - 60 ))
budget=$(( budget > 30 ? budget : 30 ))
timeout $(( budget + 120 )) python3 benchmarks/suite.py --preset gpu --device cuda --out "$OUT" \
  --budget-s $budget "$@" >"$OUT/bench.log" 2>&1
bench_rc=$?
summary "benchmarks: rc=$bench_rc in $((SECONDS - start)) s"
grep -E "time budget|fused_rnn|fused persistent|torch.nn " "$OUT/bench.log" | tail -80 \
  >> "$OUT/summary.txt"
cat "$OUT/summary.txt"
exit $(( tests_rc != 0 || persistent_rc != 0 || bench_rc != 0 ))
