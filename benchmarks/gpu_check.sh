#!/usr/bin/env bash
# The GPU check on the GPU machine, in one command:
#
#     bash benchmarks/gpu_check.sh OUTDIR [more benchmarks/gpu_check.py arguments]
#
# Installs the carried wheels (benchmarks/wheels/, kept out of git; see docs/speed.md) that the
# machine lacks into a temporary folder (keras always: the machine has none), then runs
# benchmarks/gpu_check.py at full size within a 500 s budget (each stage under its own limit) and
# writes OUTDIR/gpu_check.json (rewritten after every stage), OUTDIR/gpu_check.log and
# OUTDIR/nvidia-smi.txt. Needs no TensorFlow and no network. PYTHON overrides the interpreter.
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: bash benchmarks/gpu_check.sh OUTDIR [benchmarks/gpu_check.py arguments]" >&2
    exit 2
fi
out=$1
shift
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
python=${PYTHON:-python3}
wheels=$here/wheels
mkdir -p "$out"
site=$(mktemp -d "${TMPDIR:-/tmp}/hgkeras-gpu-check.XXXXXX")
trap 'rm -rf "$site"' EXIT

if [ -d "$wheels" ]; then
    # keras, and each other wheel whose distribution the interpreter does not have
    mapfile -t install < <("$python" - "$wheels" <<'EOF'
import pathlib
import sys
from importlib import metadata

for wheel in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    name = wheel.name.split("-")[0]
    try:
        metadata.version(name)
        if name != "keras":
            continue
    except metadata.PackageNotFoundError:
        pass
    print(wheel)
EOF
)
    if [ ${#install[@]} -gt 0 ]; then
        echo "installing into $site: ${install[*]##*/}"
        "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
            --target "$site" "${install[@]}"
    fi
elif ! KERAS_BACKEND=jax "$python" -c "import keras" 2>/dev/null; then
    echo "no keras here and no $wheels: carry the wheels (docs/speed.md, 'GPU')" >&2
    exit 2
fi
export PYTHONPATH="$site:$repo${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# JAX takes 75% of the GPU's memory at start by default; the batch-128 step may need more
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}

if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu \
        --format=csv >"$out/nvidia-smi.txt" 2>&1 || true
else
    echo "nvidia-smi: not found (no NVIDIA driver on this machine)" >"$out/nvidia-smi.txt"
fi
cat "$out/nvidia-smi.txt"

"$python" "$here/gpu_check.py" --budget 500 --out "$out/gpu_check.json" "$@" 2>&1 |
    tee "$out/gpu_check.log"
