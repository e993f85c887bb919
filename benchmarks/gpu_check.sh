#!/usr/bin/env bash
# The GPU check, run once on a machine with CUDA from the repository root (python3 there holds torch; gradscope
# runs from the checkout): the recording paths' parity tests on the GPU, then the benchmark on a slice of the grid,
# torch's cuDNN layer (a) against the fast path (auto: cuDNN with the probe input) and the unrolled loop.
# Writes to $1 (default benchmarks/): parity.log and RESULTS-gpu.md (one line a point, as it goes).
set -uo pipefail
out="${1:-benchmarks}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
# the parity tests of tests/test_paths.py (their DEVICE), without the dashboard's pytest plugin and options
GRADSCOPE_TEST_DEVICE=cuda timeout 150 python3 -m pytest -q -o addopts="" -p no:cacheprovider tests/test_paths.py \
    -k "same_trace or whichever or summary_detail" 2>&1 | tee "$out/parity.log" | tail -n 15
timeout "${GRID_SECONDS:-420}" python3 benchmarks/grid.py --device cuda --paths unrolled --rounds 3 \
    --layers 1 2 --batch 32 64 --steps 100 1000 --input 8 --hidden 128 512 --out "$out/RESULTS-gpu.md"
echo "grid exit: $?"
