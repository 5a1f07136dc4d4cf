#!/usr/bin/env bash
# Run on a CPU machine with internet, in the project's environment (`make install`): puts into
# .whl/ (git-ignored) the wheels that the GPU machine's image lacks, for CPython 3.12 on
# x86-64 Linux, checks them against that image, and prints what must travel.
#
#   bash bench/device/prepare.sh            # then carry .whl/ with the working tree
#
# The GPU machines (KINDS.md: Python 3.12, torch 2.11 + CUDA 13, Triton 3.6, transformers,
# sentencepiece, numpy, pyyaml, psutil, ...) lack megatron-core, DeepSpeed and DeepSpeed's
# pydantic and hjson. Variables: PYTHON (default .venv/bin/python, else python3), WHEELS (default
# .whl), TARGET_PYTHON (default 3.12: the GPU machine's; 3.11 makes a set for rehearsing run.sh
# on this project's CPU environment).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
WHEELS=${WHEELS:-$ROOT/.whl}
TARGET_PYTHON=${TARGET_PYTHON:-3.12}
CP=cp${TARGET_PYTHON/./}

# Binary wheels for the target Python. pydantic 2.11 rather than the newest: it needs
# typing-extensions >= 4.12.2 (2.12+ need 4.14.1+), which the image's copy surely meets.
BINARY=(
    megatron-core==0.16.1
    pydantic==2.11.10
    pydantic-core==2.33.2
    annotated-types==0.7.0
    typing-inspection==0.4.1
    hjson==3.1.0
)
DEEPSPEED=deepspeed==0.19.8  # an sdist only: built here into a pure-Python wheel, no ops
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64)

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    echo "prepare.sh: $PYTHON cannot import torch, which building the DeepSpeed wheel needs;" \
         "run it in the project's environment (make install) or set PYTHON" >&2
    exit 2
fi

rm -rf "$WHEELS"
mkdir -p "$WHEELS"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$TARGET_PYTHON" \
    --implementation cp --abi "$CP" --abi abi3 --abi none "${PLATFORMS[@]}" \
    --dest "$WHEELS" "${BINARY[@]}"
# DeepSpeed's setup.py imports torch: build against this environment's, without isolation (which
# would download a CUDA torch). DS_BUILD_OPS=0: no precompiled ops, so nothing in the wheel
# depends on this machine's torch or CUDA; DeepSpeed JIT-builds an op only if one is used, and
# the trainer uses none (torch's AdamW, torch's flatten).
DS_BUILD_OPS=0 "$PYTHON" -m pip wheel --quiet --no-deps --no-build-isolation --no-cache-dir \
    --wheel-dir "$WHEELS" "$DEEPSPEED"

"$PYTHON" bench/device/check_wheels.py "$WHEELS" --python "$TARGET_PYTHON"

repo_kib=$(git ls-files -z | xargs -0 du -ck 2>/dev/null | tail -1 | cut -f1)
wheels_kib=$(du -sk "$WHEELS" | cut -f1)
mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }
echo
echo "What must travel to the GPU machine (64 MiB at most):"
echo "  the working tree's tracked files: $(mib "$repo_kib")"
echo "  ${WHEELS#"$ROOT"/}/ (git-ignored: copy it along, or name it in the device tool's carry): $(mib "$wheels_kib")"
echo "  together: $(mib $((repo_kib + wheels_kib)))"
echo "Then, on the GPU machine: bash bench/device/run.sh"
