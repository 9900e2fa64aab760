#!/usr/bin/env bash
# The GPU machine's runs (an offline H200 with torch, nvcc, ninja, pytest, matplotlib
# preinstalled), in two calls on one warm machine, the most telling steps first so that a call cut
# short still has them.
#   bash benchmarks/run_gpu.sh OUT_DIR            the first call, under 8 minutes:
#     build the CUDA extension; the persistent kernels' tests (tensor-core forward and backward,
#     both barriers, each path forced and asserted); compute-sanitizer memcheck on the tensor-core
#     kernels; every path of the layers timed over batch and hidden sizes, the table of measured
#     paths written from it and built in as the default (path_table.py; APPLY_MEASURED_PATHS=0
#     keeps the committed one), and the default's tests under it; the headline layers against
#     torch.nn (suite.py --preset headline).
#   RUN_GPU_PART=2 bash benchmarks/run_gpu.sh OUT_DIR [suite.py arguments]
#     the second call, on the machine the first left warm (its build brought up to the working
#     tree: copy the first call's measured_paths.h to csrc/ first; built afresh on a new
#     machine): the whole test suite's CUDA cases; the
#     GPU issue's target cases (suite.py --preset targets) and their verdict (gpu_targets.py);
#     compute-sanitizer racecheck; the layer tests with the persistent kernels switched on; the
#     barrier and tensor-core step microbenchmarks (gpu_micro).
# Everything is written to a scratch folder (build.log, ptxas.txt, tests-persistent.log,
# diagnosis.log and paths-diagnosis.md/json where those tests fail, sanitizer-*.log, paths.log,
# *-paths-*.json/md, measured_paths.h, rebuild.log, tests-default.log, headline.log; tests.log,
# bench.log, targets.md, tests-persistent-on.log, barriers.md, recurrent_step.md; the suite's
# results; summary.txt), bundled after every step into OUT_DIR/run-partN.tar.gz, beside
# OUT_DIR/summary.txt and (from the sweep) OUT_DIR/measured_paths.h: the device tool brings back
# at most 8 files, and a call cut short keeps what its last step bundled. RUN_GPU_SECONDS
# (default 480 for the first call, 220 for the second) is the call's target; each step after the
# build gets at most what is left of it, less what the steps after it are owed, and a step left
# less than 20 s is skipped.
set -uo pipefail
DEST=${1:?usage: [RUN_GPU_PART=2] run_gpu.sh OUT_DIR [suite.py arguments]}
shift
PART=${RUN_GPU_PART:-1}
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
OUT=$(mktemp -d)
cd "$(dirname "$0")/.."
# The scratch folder bundled into DEST, with the summary and the table beside it.
publish() {
  cp "$OUT/summary.txt" "$DEST/"
  [ -f "$OUT/measured_paths.h" ] && cp "$OUT/measured_paths.h" "$DEST/"
  tar czf "$DEST/bundle.part" -C "$OUT" . && mv "$DEST/bundle.part" "$DEST/run-part$PART.tar.gz"
}
summary() { echo "$*" | tee -a "$OUT/summary.txt"; publish; }
# (A call ended by a signal or an early exit publishes what it has too.)
trap publish EXIT
trap 'exit 143' TERM
TOTAL=${RUN_GPU_SECONDS:-$([ "$PART" = 2 ] && echo 220 || echo 480)}
begin=$SECONDS
# Seconds a step may take: at most $1, and no more than what is left less $2 (owed to later
# steps).
allot() {
  local left=$(( TOTAL - (SECONDS - begin) - $2 ))
  echo $(( left < $1 ? left : $1 ))
}
# Whether a step given $1 seconds runs (else it is skipped and said so: $2 names it).
worth() {
  [ "$1" -ge 20 ] && return 0
  summary "$2: skipped, $1 s left"
  return 1
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
summary "GPU: $(tail -1 "$OUT/gpu.txt") (part $PART)"

# Built in place (not by pip install -e, whose editable build compiles in a temporary folder, so
# that a later rebuild would start over): the objects stay in build/ for ninja, and the package
# is imported from the repository (PYTHONPATH).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
build() {
  local start=$SECONDS
  TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" FUSED_RNN_PTXAS_VERBOSE=1 \
    MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
    python3 setup.py build_ext --inplace >"$OUT/build.log" 2>&1
  local rc=$?
  summary "build: rc=$rc in $((SECONDS - start)) s"
  [ $rc -eq 0 ] || { tail -40 "$OUT/build.log"; exit 1; }
  python3 .ci/ptxas_summary.py "$OUT/build.log" > "$OUT/ptxas.txt"
}
# Incremental (ninja): after a change of csrc/measured_paths.h only its two readers recompile.
rebuild() {
  TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
    python3 setup.py -q build_ext --inplace >>"$OUT/rebuild.log" 2>&1
}
if [ "$PART" = 2 ] && \
    python3 -c "import fused_rnn, sys; sys.exit(not fused_rnn.build_info()['cuda'])" 2>/dev/null; then
  # The first call's build, brought up to this working tree (its csrc/measured_paths.h: copy the
  # first call's table there before this call to keep the default it measured).
  start=$SECONDS
  rebuild || { summary "rebuild: FAILED (rebuild.log)"; tail -40 "$OUT/rebuild.log"; exit 1; }
  summary "rebuild: in $((SECONDS - start)) s"
else
  build
fi
python3 -c "import fused_rnn, json; print(json.dumps(fused_rnn.build_info()))" | tee -a "$OUT/summary.txt"
# The device as the tensor-core plans see it (the CPU tests assume 66 clusters of 2 on an H200).
python3 -c "from fused_rnn import _C; print('tensor-core device:', _C.tensor_core_device(0))" \
  2>&1 | tee -a "$OUT/summary.txt"

# The CUDA tests are independent: spread them over workers where pytest-xdist is there. A test
# that hangs is stopped (pytest-timeout, where there: by a thread, since a kernel that never ends
# keeps the main thread in CUDA, where no signal's handler runs; the worker exits and xdist
# replaces it) and so is a whole pass (timeout); a test that breaks the CUDA context stops its
# worker too (tests/conftest.py), so that the tests after it run in a fresh one. Each worker
# gets its share of the cores: 8 workers with a thread per core each oversubscribe the CPU, and the
# CPU tests' per-step thread barriers (ours and ATen's) then crawl (one test took > 120 s).
PARALLEL=()
TEST_THREADS=$(nproc)
if python3 -c "import xdist" 2>/dev/null; then
  PARALLEL+=(-n 8 -v)  # -v: each result as it lands
  TEST_THREADS=$(( $(nproc) / 8 > 1 ? $(nproc) / 8 : 1 ))
fi
python3 -c "import pytest_timeout" 2>/dev/null && PARALLEL+=(--timeout 90 --timeout-method thread)
failed=0
run_tests() {  # name, seconds, pytest arguments...
  local name=$1 seconds=$2 start=$SECONDS
  shift 2
  worth "$seconds" "$name" || return 0
  OMP_NUM_THREADS=$TEST_THREADS timeout "$seconds" python3 -m pytest -rfE -p no:cacheprovider \
    "${PARALLEL[@]}" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  summary "$name: rc=$rc in $((SECONDS - start)) s: $(tail -1 "$OUT/$name.log")"
  grep -E "^(FAILED|ERROR) " "$OUT/$name.log" >> "$OUT/summary.txt"
  [ $rc -eq 0 ] || failed=1
  return $rc
}

# Where the CUDA tests fail: each forced path against the step-wise one, and the step-wise one
# against torch.nn, with where the errors lie (steps, rows, units; diagnose_paths.py), for the
# sessions without a GPU.
diagnose() {  # seconds
  local seconds=$1 start=$SECONDS
  worth "$seconds" "paths' diagnosis" || return 0
  timeout $(( seconds + 30 )) python3 benchmarks/diagnose_paths.py --out "$OUT" \
    --budget-s "$(( seconds - 10 ))" >"$OUT/diagnosis.log" 2>&1
  summary "paths' diagnosis: rc=$? in $((SECONDS - start)) s: $(tail -1 "$OUT/diagnosis.log")"
  sed -n '/^## Not ok/,/^## Ok/p' "$OUT/paths-diagnosis.md" 2>/dev/null | grep -v "^## Ok" \
    | head -60 >> "$OUT/summary.txt"
}

part1() {
  # The persistent kernels' own tests (the tensor-core kernels were written without a GPU).
  run_tests tests-persistent "$(allot 70 250)" tests/test_persistent.py ||
    diagnose "$(allot 45 200)"

  sanitize memcheck "$(allot 45 200)"

  # Every path of the CUDA layers timed over batch and hidden sizes (path_table.py sweep), and
  # the table of measured paths the default reads, written from it (measured_paths.h) and, unless
  # APPLY_MEASURED_PATHS=0, built in: the steps after this one run the default it gives (the
  # session then commits that header to csrc/ with the sweep's results). A failed rebuild puts
  # the committed table back.
  start=$SECONDS
  seconds=$(allot 90 110)
  if worth "$seconds" "path sweep"; then
    timeout $(( seconds + 60 )) python3 benchmarks/path_table.py sweep --out "$OUT" \
      --budget-s "$seconds" >"$OUT/paths.log" 2>&1
    summary "path sweep: rc=$? in $((SECONDS - start)) s: $(tail -1 "$OUT/paths.log")"
    if python3 benchmarks/path_table.py header "$OUT"/*-paths-*.json >"$OUT/measured_paths.h" \
        2>"$OUT/measured_paths.err"; then
      summary "measured_paths.h: $(grep -c "{CudaPath::kTensorCores\|{CudaPath::kSimt" \
"$OUT/measured_paths.h") point(s) with a persistent path first"
      [ "${APPLY_MEASURED_PATHS:-1}" != 0 ] && apply_measured_paths
    else
      summary "measured_paths.h: not written ($(tail -1 "$OUT/measured_paths.err"))"
    fi
  fi

  # The default's tests under that table (its paths named and run, CUDA graphs, training peak
  # memory against torch.nn's).
  run_tests tests-default "$(allot 40 60)" tests/test_persistent.py \
    -k "default or training_peak_memory" tests/test_cuda_graphs.py tests/test_cuda_memory.py

  # The headline layers: step-wise, persistent (flags and grid.sync), the default and torch.nn,
  # every dtype.
  start=$SECONDS
  seconds=$(allot 90 0)
  if worth "$seconds" "headline benchmarks"; then
    timeout $(( seconds + 30 )) python3 benchmarks/suite.py --preset headline --device cuda \
      --repeats 5 --out "$OUT" --budget-s "$(( seconds - 15 ))" >"$OUT/headline.log" 2>&1
    summary "headline benchmarks: rc=$? in $((SECONDS - start)) s"
    grep -E "fused_rnn|fused persistent|torch.nn |time budget" "$OUT/headline.log" \
      >> "$OUT/summary.txt"
  fi
}

# The sweep's table in csrc/ and the extension rebuilt with it.
apply_measured_paths() {
  local start=$SECONDS
  cp csrc/measured_paths.h "$OUT/measured_paths.committed.h"
  cp "$OUT/measured_paths.h" csrc/measured_paths.h
  if rebuild; then
    summary "default: this run's measured paths, rebuilt in $((SECONDS - start)) s"
  else
    cp "$OUT/measured_paths.committed.h" csrc/measured_paths.h
    rebuild
    summary "default: the rebuild with this run's measured paths FAILED (rebuild.log); the \
committed table again (rc=$?)"
    failed=1
  fi
}

# compute-sanitizer on the tensor-core kernels for at most $2 seconds: memcheck ($1) on both cells
# in bfloat16 (float16 differs in the mma instruction only) at H=48 B=9 (partial n-tiles), each
# barrier, one block or a cluster of two a group, padded and packed, and at H=272 on clusters
# (both blocks holding k-tiles); racecheck (shared memory) on the LSTM's, both 16-bit dtypes;
# forward and backward.
sanitize() {
  local tool=$1 seconds=$2 start=$SECONDS sanitizer select
  worth "$seconds" "compute-sanitizer $tool" || return 0
  sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  select="(tensor_core_kernel_matches and H48 or take_packed and unsorted and not grid \
or tensor_core_kernel_matches and H272 and split2) and bfloat16"
  [ "$tool" = racecheck ] && select="tensor_core_kernel_matches and H48 and lstm"
  timeout "$seconds" "$sanitizer" --tool "$tool" --error-exitcode 3 \
    --kernel-name kns=tensor_core_ \
    python3 -m pytest -q -p no:cacheprovider tests/test_persistent.py -k "$select" \
    >"$OUT/sanitizer-$tool.log" 2>&1
  local rc=$?
  [ $rc -eq 0 ] || failed=1
  summary "compute-sanitizer $tool (tensor-core kernels): rc=$rc in $((SECONDS - start)) s: \
$(grep -E "ERROR SUMMARY|passed|failed" "$OUT/sanitizer-$tool.log" | tail -2 | tr '\n' ' ')"
}

part2() {
  local start seconds micro
  # The whole suite's CUDA cases under the default the first call built (CI runs the CPU's).
  run_tests tests "$(allot 120 80)" --skip-cpu-cases tests || diagnose "$(allot 40 80)"

  # The GPU issue's targets and their verdict.
  start=$SECONDS
  seconds=$(allot 150 20)
  if worth "$seconds" "benchmarks (targets preset)"; then
    timeout $(( seconds + 30 )) python3 benchmarks/suite.py --preset targets --device cuda \
      --repeats 5 --out "$OUT" --budget-s "$(( seconds - 15 ))" "$@" >"$OUT/bench.log" 2>&1
    summary "benchmarks (targets preset): rc=$? in $((SECONDS - start)) s"
    python3 benchmarks/gpu_targets.py "$OUT"/*-targets-*.json >"$OUT/targets.md" 2>&1
    cat "$OUT/targets.md" >> "$OUT/summary.txt"
  fi

  sanitize racecheck "$(allot 30 0)"

  # The layer tests with the persistent kernels switched on.
  run_tests tests-persistent-on "$(allot 60 0)" --skip-cpu-cases --persistent-kernels \
    tests/test_sequence.py tests/test_modules.py

  # The microbenchmarks behind the persistent kernels' design (benchmarks/gpu_micro).
  for micro in barriers recurrent_step; do
    start=$SECONDS
    seconds=$(allot 30 0)
    worth "$seconds" "$micro" || continue
    nvcc -O3 -std=c++17 -arch=sm_90a -o "/tmp/$micro" "benchmarks/gpu_micro/$micro.cu" \
      >"$OUT/$micro-build.log" 2>&1 && timeout "$seconds" "/tmp/$micro" >"$OUT/$micro.md" 2>&1
    local rc=$?
    cat "$OUT/$micro.md" >> "$OUT/summary.txt" 2>/dev/null
    summary "$micro: rc=$rc in $((SECONDS - start)) s"
  done
}

if [ "$PART" = 2 ]; then part2 "$@"; else part1; fi
cat "$OUT/summary.txt"
exit $failed
