#!/usr/bin/env bash
# The plugin against NNI 3.0's DARTS and Proxyless on one CUDA GPU, in one go (about 5 minutes on
# an H100/H200), without network access:
#
#   bash benchmarks/gpu.sh [OUT_DIR]
#
# Needs a Python with this repository installed (pip install -e .). On a machine that has no such
# environment and no network, carry wheels along: on a connected machine with the same Python,
#   pip download -d wheels -e . && pip wheel --no-deps -w wheels .
# and this script installs from ./wheels with --no-index. Nothing is downloaded at run time: the data
# are synthetic CIFAR-shaped tensors made by the benchmark itself.
#
# Writes OUT_DIR/gpu-standard.json (default benchmarks/results) and prints
# the tables: s/step, images/s, CUDA peak memory, plugin/NNI ratios, and for the DARTS rows the
# achieved TFLOP/s of one step's useful work and its fraction of the card's dense bf16 peak.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results}
PY=${PYTHON:-python3}
mkdir -p "$OUT"

if ! "$PY" -c "import nni_visplugin, nni, torch" 2>/dev/null; then
    if [ -d wheels ]; then
        "$PY" -m pip install --no-index --find-links wheels -e .
    else
        echo "nni_visplugin is not importable with $PY and there is no ./wheels directory to install from" >&2
        exit 1
    fi
fi
"$PY" - <<'EOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("no CUDA device visible to torch")
print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
EOF
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true

# The standard setting of the issue (8 cells, C=16, batch 64, 3x32x32): DARTS, PC-DARTS, the lean
# variants and Proxyless on both spaces; one repeat of 3 warm-up + 10 measured steps per side.
timeout 420 "$PY" benchmarks/nni_compare.py --device cuda --preset standard --warmup 3 --steps 10 --repeats 1 \
    --threads 4 --algos darts pcdarts darts-lean proxyless-cell proxyless-mobile --timeout 200 \
    --out "$OUT/gpu-standard.json"
