#!/usr/bin/env bash
# The GPU (CuPy) backend on a CUDA machine, in one go (about 5 minutes on one H100/H200):
#   1. the GPU tests (tests/test_ptycho_gpu.py: every fused kernel and the array path against the
#      Numba kernels, iterations against the CPU engine),
#   2. bench_gpu.py: seconds per iteration, GPU against the CPU engine on the same machine,
#   3. the default pristine sample simulated here and reconstructed by both backends with the same
#      settings, each scored against the simulator's truth (validate_ptycho.py).
# Usage: benchmarks/gpu_check.sh [OUT_DIR]   (run from the repository root; needs numpy, scipy,
# numba, h5py, scikit-image, pyyaml, matplotlib and cupy; msptycho is taken from src/).
set -u -o pipefail
out=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$out"
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
step() { echo "== $* ($(date +%T))"; }
step machine
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/machine.txt"
$py -c "import sys, numpy, scipy, numba, cupy; print('python', sys.version.split()[0], 'numpy', numpy.__version__,
'scipy', scipy.__version__, 'numba', numba.__version__, 'cupy', cupy.__version__, 'cores', __import__('os').cpu_count())" \
    | tee -a "$out/machine.txt"
step tests
timeout "${TEST_TIMEOUT:-240}" $py -m pytest -q -p no:cacheprovider tests/test_ptycho_gpu.py 2>&1 \
    | tee "$out/gpu_tests.log" | tail -25
step benchmark
timeout "${BENCH_TIMEOUT:-240}" $py benchmarks/bench_gpu.py ${BENCH_ARGS:-} --json "$out/bench_gpu.json" 2>&1 \
    | tee "$out/bench_gpu.log" | grep -v '^{'
step simulate
raw=${RAW_DIR:-/tmp/gpu_check_raw}
[ -f "$raw/truth.h5" ] || $py benchmarks/simulate_sample.py pristine "$raw" 2>&1 | tail -2
for be in gpu cpu; do
    step "validate $be"
    timeout "${VALIDATE_TIMEOUT:-200}" $py benchmarks/validate_ptycho.py "$raw" --backend $be \
        --json "$out/validate_$be.json" 2>"$out/validate_$be.log" | tee "$out/validate_$be.txt"
done
step done
