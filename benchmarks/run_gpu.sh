#!/usr/bin/env bash
# One run on the GPU machine (an offline H200 with torch, nvcc, ninja, pytest, matplotlib
# preinstalled), under 10 minutes, the most telling steps first so that a run cut short still
# has them: build the CUDA extension; the persistent kernels' tests (tensor-core forward and
# backward, both barriers, each path forced and asserted); compute-sanitizer memcheck and
# racecheck on the tensor-core kernels; every path of the layers timed over batch and hidden
# sizes, the table of measured paths written from it and built in as the default
# (path_table.py; APPLY_MEASURED_PATHS=0 keeps the committed one); the whole test suite's CUDA
# cases under that default; the headline layers against torch.nn (suite.py --preset headline);
# the barrier and tensor-core step microbenchmarks (benchmarks/gpu_micro); the layer tests again
# with the persistent kernels switched on; the GPU issue's target cases (suite.py --preset
# targets) for what is left of the time, and their verdict (gpu_targets.py). Everything lands in
# the output folder given as the argument (build.log, ptxas.txt, tests-persistent.log,
# sanitizer-*.log, paths.log, *-paths-*.json/md, measured_paths.h, rebuild.log, tests.log,
# headline.log, barriers.md, recurrent_step.md, tests-persistent-on.log, bench.log, targets.md,
# the results, summary.txt) and the results also in benchmarks/results/ (named by date, preset
# and GPU).
#   bash benchmarks/run_gpu.sh OUT_DIR [suite.py arguments for the last step, e.g. --repeats N]
# RUN_GPU_SECONDS (default 570) is the whole run's target; each step after the build gets at most
# what is left of it, less what the steps after it are owed. The targets preset (228 cases) gets
# what the tests leave, often nothing on a first run: a second call on the warm machine (within
# its idle time, so the extension built with the measured paths is still there) runs it alone,
# e.g. python3 benchmarks/suite.py --preset targets --device cuda --repeats 5 --budget-s 150
# --out OUT && python3 benchmarks/gpu_targets.py OUT/*-targets-*.json
set -uo pipefail
OUT=${1:?usage: run_gpu.sh OUT_DIR [suite.py arguments]}
shift
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
summary() { echo "$*" | tee -a "$OUT/summary.txt"; }
TOTAL=${RUN_GPU_SECONDS:-570}
begin=$SECONDS
# Seconds a step may take: at most $1, and no more than what is left less $2 (owed to later
# steps); at least 10.
allot() {
  local left=$(( TOTAL - (SECONDS - begin) - $2 ))
  local s=$(( left < $1 ? left : $1 ))
  echo $(( s > 10 ? s : 10 ))
}

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
# The device as the tensor-core plans see it (the CPU tests assume 66 clusters of 2 on an H200).
python3 -c "from fused_rnn import _C; print('tensor-core device:', _C.tensor_core_device(0))" \
  2>&1 | tee -a "$OUT/summary.txt"

# The CUDA tests are independent: spread them over workers where pytest-xdist is there. A test
# that hangs is stopped (pytest-timeout, where there) and so is a whole pass (timeout). Each worker
# gets its share of the cores: 8 workers with a thread per core each oversubscribe the CPU, and the
# CPU tests' per-step thread barriers (ours and ATen's) then crawl (one test took > 120 s).
PARALLEL=()
TEST_THREADS=$(nproc)
if python3 -c "import xdist" 2>/dev/null; then
  PARALLEL+=(-n 8 -v)  # -v: each result as it lands
  TEST_THREADS=$(( $(nproc) / 8 > 1 ? $(nproc) / 8 : 1 ))
fi
python3 -c "import pytest_timeout" 2>/dev/null && PARALLEL+=(--timeout 90)
run_tests() {  # name, seconds, pytest arguments...
  local name=$1 seconds=$2 start=$SECONDS
  shift 2
  OMP_NUM_THREADS=$TEST_THREADS timeout "$seconds" python3 -m pytest -rfE -p no:cacheprovider \
    "${PARALLEL[@]}" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  summary "$name: rc=$rc in $((SECONDS - start)) s: $(tail -1 "$OUT/$name.log")"
  grep -E "^(FAILED|ERROR) " "$OUT/$name.log" >> "$OUT/summary.txt"
  return $rc
}

# The persistent kernels' own tests (the tensor-core kernels were written without a GPU).
run_tests tests-persistent "$(allot 70 330)" tests/test_persistent.py
persistent_rc=$?

# compute-sanitizer on the tensor-core kernels: memcheck on both cells and dtypes at H=48 B=9
# (partial n-tiles), one block or a cluster of two a group, padded and packed, and at H=272 on
# clusters (both blocks holding k-tiles); racecheck (shared memory) on the LSTM's; forward and
# backward.
SANITIZER=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
for tool in memcheck racecheck; do
  start=$SECONDS
  select="tensor_core_kernel_matches and H48 or take_packed and unsorted and flags \
or tensor_core_kernel_matches and H272 and split2 and bfloat16"
  [ $tool = racecheck ] && select="tensor_core_kernel_matches and H48 and lstm"
  timeout "$(allot 50 250)" "$SANITIZER" --tool $tool --error-exitcode 3 \
    --kernel-name kns=tensor_core_ \
    python3 -m pytest -q -p no:cacheprovider tests/test_persistent.py -k "$select" \
    >"$OUT/sanitizer-$tool.log" 2>&1
  summary "compute-sanitizer $tool (tensor-core kernels): rc=$? in $((SECONDS - start)) s: \
$(grep -E "ERROR SUMMARY|passed|failed" "$OUT/sanitizer-$tool.log" | tail -2 | tr '\n' ' ')"
done

# Every path of the CUDA layers timed over batch and hidden sizes (path_table.py sweep), and the
# table of measured paths the default reads, written from it (measured_paths.h) and, unless
# APPLY_MEASURED_PATHS=0, built in: the steps after this one run the default it gives (the
# session then commits that header to csrc/ with the sweep's results). A failed rebuild puts the
# committed table back.
start=$SECONDS
budget=$(allot 110 200)
timeout $(( budget + 60 )) python3 benchmarks/path_table.py sweep --out "$OUT" \
  --budget-s "$budget" >"$OUT/paths.log" 2>&1
summary "path sweep: rc=$? in $((SECONDS - start)) s: $(tail -1 "$OUT/paths.log")"
if python3 benchmarks/path_table.py header "$OUT"/*-paths-*.json >"$OUT/measured_paths.h" \
    2>"$OUT/measured_paths.err"; then
  summary "measured_paths.h: $(grep -c "{CudaPath::kTensorCores\|{CudaPath::kSimt" \
"$OUT/measured_paths.h") point(s) with a persistent path first"
  if [ "${APPLY_MEASURED_PATHS:-1}" != 0 ]; then
    start=$SECONDS
    cp csrc/measured_paths.h "$OUT/measured_paths.committed.h"
    cp "$OUT/measured_paths.h" csrc/measured_paths.h
    rebuild() {
      TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
        python3 setup.py -q build_ext --inplace >>"$OUT/rebuild.log" 2>&1
    }
    if rebuild; then
      summary "default: this run's measured paths, rebuilt in $((SECONDS - start)) s"
    else
      cp "$OUT/measured_paths.committed.h" csrc/measured_paths.h
      rebuild
      summary "default: the rebuild with this run's measured paths FAILED (rebuild.log); the \
committed table again (rc=$?)"
    fi
  fi
else
  summary "measured_paths.h: not written ($(tail -1 "$OUT/measured_paths.err"))"
fi

# The whole suite's CUDA cases under that default (CI runs the CPU's).
run_tests tests "$(allot 150 60)" --skip-cpu-cases tests
tests_rc=$?

# The headline layers: step-wise, persistent (flags and grid.sync), the default and torch.nn,
# every dtype.
start=$SECONDS
budget=$(allot 60 20)
timeout $(( budget + 60 )) python3 benchmarks/suite.py --preset headline --device cuda \
  --repeats 5 --out "$OUT" --budget-s "$budget" >"$OUT/headline.log" 2>&1
summary "headline benchmarks: rc=$? in $((SECONDS - start)) s"
grep -E "fused_rnn|fused persistent|torch.nn |time budget" "$OUT/headline.log" >> "$OUT/summary.txt"

# The microbenchmarks behind the persistent kernels' design (benchmarks/gpu_micro).
for micro in barriers recurrent_step; do
  start=$SECONDS
  nvcc -O3 -std=c++17 -arch=sm_90a -o "$OUT/$micro" "benchmarks/gpu_micro/$micro.cu" \
    >"$OUT/$micro-build.log" 2>&1 && timeout "$(allot 30 10)" "$OUT/$micro" >"$OUT/$micro.md" 2>&1
  summary "$micro: rc=$? in $((SECONDS - start)) s"
  cat "$OUT/$micro.md" >> "$OUT/summary.txt" 2>/dev/null
  rm -f "$OUT/$micro"
done

# The layer tests with the persistent kernels switched on.
run_tests tests-persistent-on "$(allot 120 10)" --skip-cpu-cases --persistent-kernels \
  tests/test_sequence.py tests/test_modules.py
persistent_on_rc=$?

start=$SECONDS
budget=$(allot 600 20)
if [ "$budget" -gt 30 ]; then
  timeout $(( budget + 60 )) python3 benchmarks/suite.py --preset targets --device cuda \
    --out "$OUT" --budget-s "$budget" "$@" >"$OUT/bench.log" 2>&1
  summary "benchmarks (targets preset): rc=$? in $((SECONDS - start)) s"
  python3 benchmarks/gpu_targets.py "$OUT"/*-targets-*.json >"$OUT/targets.md" 2>&1
  cat "$OUT/targets.md" >> "$OUT/summary.txt"
fi
cat "$OUT/summary.txt"
exit $(( persistent_rc != 0 || tests_rc != 0 || persistent_on_rc != 0 ))
