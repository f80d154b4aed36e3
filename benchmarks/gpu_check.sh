#!/usr/bin/env bash
# The one script to run on a GPU machine (issue #15): checks the GPU, finds a Python with
# torch, makes this source tree importable as fedcmr, and runs benchmarks/gpu_train.py
# within 450 s (the whole script: under 8 minutes). Writes benchmarks/results/gpu.json,
# rewritten after each section (a run stopped at the limit keeps what it measured), and
# copies it and the log to $OUT when $OUT is set.
#
#   bash benchmarks/gpu_check.sh [gpu_train.py options, e.g. --steps 30]
#
# Exit codes: 0 measured; 124 stopped at the time limit (gpu.json holds the sections done,
# "complete": false); 2 no GPU; 3 a Python package missing; other: the benchmark failed.
#
# Python: .venv/bin/python where the tree has one, else python3 (the GPU image's python3
# holds torch and torchvision, not pydantic). A missing pydantic is installed from wheels in
# .whl/ ($FEDCMR_WHEELS) when they were carried. Make them on a machine that reaches PyPI:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_17_x86_64 -d .whl pydantic==2.14.4 \
#     pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
#     typing_extensions==4.16.0
# and name .whl in the device run's carry.
set -u
cd "$(dirname "$0")/.." || exit 1
RESULT=benchmarks/results/gpu.json
LOGDIR=${OUT:-${TMPDIR:-/tmp}}
WHEELS=${FEDCMR_WHEELS:-.whl}
say() { echo "gpu_check: $*"; }

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    say "NO GPU: nvidia-smi is missing or lists no device; nothing measured" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv

if [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
    say "python: $PY (the tree's venv)"
else
    PY=$(command -v python3) || { say "no .venv/bin/python and no python3" >&2; exit 3; }
    say "no .venv/bin/python here; using $PY ($("$PY" --version 2>&1))"
fi

if ! "$PY" -c "import fedcmr.common.atomic" 2>/dev/null; then
    # fedcmr is not installed: map its namespace onto this tree (pyproject's package-dir)
    SHIM=$(mktemp -d)
    mkdir -p "$SHIM/fedcmr"
    for part in common client server lab cli; do ln -s "$PWD/$part" "$SHIM/fedcmr/$part"; done
    export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
    say "fedcmr not installed; importing it from $PWD through $SHIM"
fi

if ! "$PY" -c "import pydantic" 2>/dev/null; then
    if ! ls "$WHEELS"/pydantic-*.whl >/dev/null 2>&1; then
        say "pydantic is missing and $WHEELS/ holds no wheels for it. Fix: make them (see" \
            "this script's header) and carry .whl, or run where fedcmr is installed" >&2
        exit 3
    fi
    SITE=$(mktemp -d)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" \
        "$WHEELS"/*.whl || { say "installing $WHEELS/*.whl failed" >&2; exit 3; }
    export PYTHONPATH="$SITE:$PYTHONPATH"
    say "pydantic installed from $WHEELS/ into $SITE"
fi

if ! "$PY" -c "
import torch, torchvision, pydantic, fedcmr.common.device
assert torch.cuda.is_available(), 'torch sees no CUDA device'
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn',
      torch.backends.cudnn.version(), 'on', torch.cuda.get_device_name())
"; then
    say "NO GPU usable from Python, or a package missing (the line above says which)" >&2
    exit 2
fi

START=$(mktemp)
set -o pipefail
timeout -k 10 450 env PYTHONUNBUFFERED=1 "$PY" benchmarks/gpu_train.py --budget-s 400 \
    --out "$RESULT" "$@" 2>&1 | tee "$LOGDIR/gpu_train.log"
rc=${PIPESTATUS[0]}
if [ ! -f "$RESULT" ] || [ ! "$RESULT" -nt "$START" ]; then
    say "gpu_train.py wrote no $RESULT (exit $rc); see $LOGDIR/gpu_train.log" >&2
    exit $(( rc == 0 ? 1 : rc ))
fi
if [ -n "${OUT:-}" ]; then
    cp "$RESULT" "$OUT/gpu.json"
    say "copied $RESULT to $OUT/gpu.json"
fi
[ "$rc" = 124 ] && say "stopped at the 450 s limit: $RESULT holds the sections done"
exit "$rc"
