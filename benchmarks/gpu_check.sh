#!/usr/bin/env bash
# Everything that needs a GPU, in one command (for a machine with CUDA, torch and Triton installed):
# build the CUDA extension, run the GPU tests, then the full benchmark run.
#   bash benchmarks/gpu_check.sh [OUT_DIR]
# Results go to OUT_DIR (default benchmarks/results/<gpu>-<date>): logs, results.json, report.md, plots.
set -uo pipefail
cd "$(dirname "$0")/.."
name=$(python3 -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '_'))") || exit 1
out=${1:-benchmarks/results/${name}-$(date +%Y-%m-%d)}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
{
  echo "date: $(date -u)"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} > "$out/env.txt" 2>&1
python3 -m pip install -q --no-deps --no-build-isolation -e . > "$out/install.log" 2>&1
python3 -c "import videogpt_fast.csrc_build as b; b.load(verbose=True)" > "$out/csrc_build.log" 2>&1; echo "csrc build rc=$?"
python3 -m pytest -q -m gpu -p no:cacheprovider tests > "$out/gpu_tests.log" 2>&1; echo "gpu tests rc=$?"; tail -3 "$out/gpu_tests.log"
python3 -m pytest -q -p no:cacheprovider tests > "$out/all_tests.log" 2>&1; echo "all tests rc=$?"; tail -1 "$out/all_tests.log"
python3 -m benchmarks.run --device cuda --out "$out" > "$out/benchmarks.log" 2>&1; echo "benchmarks rc=$?"; tail -2 "$out/benchmarks.log"
