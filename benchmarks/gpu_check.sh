#!/usr/bin/env bash
# Everything that needs a GPU, in phases that each fit a 10-minute command (for a machine with
# CUDA, torch and Triton installed):
#   bash benchmarks/gpu_check.sh PHASE [OUT_DIR]
# PHASE: tests   - install, JIT-build csrc/, GPU tests (-m gpu), then the whole suite
#        kernels - benchmark group "kernels" (codebook, axial, block-sparse; fp32/bf16/fp16)
#        models  - benchmark group "models" (VQ-VAE, prior train steps, sampling)
#        data    - benchmark group "data" (PyAV vs DALI vs torchvision clips/s)
#        all     - every phase in turn
# Results go to OUT_DIR (default benchmarks/results/<gpu>-<date>): env.txt, logs, results.json
# (benchmark phases merge into it), report.md and plots. With GPU_CHECK_ARCHIVE=FILE.tar.gz the
# whole folder is also packed into one file (the device tool returns at most 8 files), e.g.
#   GPU_CHECK_ARCHIVE=$OUT/results.tar.gz bash benchmarks/gpu_check.sh kernels /tmp/gpu/H100-2026-11-23
# (keep OUT_DIR outside the repo so later phases on the same warm machine merge into it). Then, on
# the dev machine, unpack it under benchmarks/results/ and run
#   python -m benchmarks.report benchmarks/results/<dir>/results.json --readme README.md
set -uo pipefail
cd "$(dirname "$0")/.."
phase=${1:-all}
name=$(python3 -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '_'))") || exit 1
out=${2:-benchmarks/results/${name}-$(date +%Y-%m-%d)}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
rc=0

setup() {
  {
    echo "date: $(date -u)"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
    echo "cpu cores: $(nproc)"
  } > "$out/env.txt" 2>&1
  python3 -m pip install -q --no-deps --no-build-isolation -e . > "$out/install.log" 2>&1 || rc=1
  python3 -c "import videogpt_fast.csrc_build as b; b.load(verbose=True)" > "$out/csrc_build.log" 2>&1
  echo "csrc build rc=$?"
}

tests() {
  setup
  python3 -m pytest -q -m gpu -p no:cacheprovider tests > "$out/gpu_tests.log" 2>&1; r=$?
  echo "gpu tests rc=$r"; tail -3 "$out/gpu_tests.log"; [ $r -eq 0 ] || rc=1
  python3 -m pytest -q -p no:cacheprovider -x tests > "$out/all_tests.log" 2>&1; r=$?
  echo "all tests rc=$r"; tail -1 "$out/all_tests.log"; [ $r -eq 0 ] || rc=1
}

bench() {  # $1: group
  python3 -c "import videogpt_fast.csrc_build as b; b.load()" > /dev/null 2>&1  # cached build, if any
  python3 -m benchmarks.run --device cuda --group "$1" --merge --out "$out" > "$out/benchmarks_$1.log" 2>&1; r=$?
  echo "benchmarks $1 rc=$r"; tail -2 "$out/benchmarks_$1.log"; [ $r -eq 0 ] || rc=1
}

case "$phase" in
  tests) tests ;;
  kernels|models|data) bench "$phase" ;;
  all) tests; bench kernels; bench models; bench data ;;
  *) echo "unknown phase $phase (tests|kernels|models|data|all)"; exit 2 ;;
esac
if [ -n "${GPU_CHECK_ARCHIVE:-}" ]; then
  tar czf "$GPU_CHECK_ARCHIVE" -C "$(dirname "$out")" "$(basename "$out")" && echo "packed $out into $GPU_CHECK_ARCHIVE"
fi
exit $rc
