#!/usr/bin/env bash
# On a machine with one GPU (no registry needed): installs the wheels that prepare.sh left in
# .whl/, runs the GPU correctness tests, benchmarks the trainer (nGPT and GPT-2 0.5B, 1k and
# 4k, compiled layers on and off) and nGPT's ops, and writes $OUT/gpu_report.md with the raw
# metrics ($OUT/metrics.jsonl) and logs ($OUT/logs.tar.gz). Planned to end within BUDGET_S
# (480 s) of wall time; a failing step is recorded in the report and the rest still runs.
#
#   bash bench/device/run.sh          # on the GPU machine
#   bash bench/device/run.sh --cpu    # rehearsal of every step on a CPU machine (tiny configs)
#
# Variables: OUT (default ./gpu_report), WHEELS (default ./.whl), PYTHON (default python3),
# BUDGET_S, WORK (scratch, default /tmp/ngpt_kit).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
MODE=gpu
[[ "${1:-}" == "--cpu" ]] && MODE=cpu
PY=${PYTHON:-python3}
OUT=${OUT:-$ROOT/gpu_report}
WHEELS=${WHEELS:-$ROOT/.whl}
WORK=${WORK:-/tmp/ngpt_kit}
SITE=$WORK/site
LOGS=$WORK/logs
if [[ $MODE == gpu ]]; then
    BUDGET_S=${BUDGET_S:-480}
    PYTEST_S=200    # correctness tests; the compile prewarm runs beside them
    OPS_S=45        # kept back for bench_ngpt_ops.py
    BENCH_ARGS=(--device cuda --min-run-s 35)
    OPS_ARGS=(--device cuda)
else
    BUDGET_S=${BUDGET_S:-3600}
    PYTEST_S=900
    OPS_S=300
    BENCH_ARGS=(--device cpu --seq 64 --min-run-s 30)
    OPS_ARGS=(--device cpu --tokens 64 --seq 16 --hidden 128 --heads 2 --no-graphs --reps 1)
    export TRITON_INTERPRET=1  # the only way Triton kernels run without a GPU
fi
REPORT_S=15

START=$(date +%s)
rm -rf "$WORK/runs" "$WORK/prewarm" "$LOGS" "$SITE"
mkdir -p "$OUT" "$LOGS"
PHASES=$LOGS/phases.md
printf '| phase | wall (s) | result |\n|---|---:|---|\n' > "$PHASES"

elapsed() { echo $(($(date +%s) - START)); }
left() { echo $((BUDGET_S - $(elapsed))); }
log() { echo "[run.sh $(elapsed) s] $*" | tee -a "$LOGS/run.log" >&2; }
# phase NAME SECONDS RESULT: one row of the report's phase table.
phase() { printf '| %s | %s | %s |\n' "$1" "$2" "$3" >> "$PHASES"; log "$1: $3 ($2 s)"; }

# table_or_log TABLE LOG: a benchmark's markdown, or the end of its log when it wrote none.
table_or_log() {
    if [[ -s $1 ]]; then
        cat "$1"
    else
        echo "no table; the end of its log:"
        echo '```'
        tail -30 "$2" 2>/dev/null
        echo '```'
    fi
}

write_report() {
    local report=$OUT/gpu_report.md
    {
        echo "# GPU kit report ($MODE mode)"
        echo
        cat "$LOGS/environment.md" 2>/dev/null
        echo
        echo "Total wall time $(elapsed) s (budget $BUDGET_S s)."
        echo
        echo "## Phases"
        echo
        cat "$PHASES"
        echo
        echo "## Correctness: pytest -m gpu tests/gpu"
        echo
        if [[ -f $LOGS/pytest.log ]]; then
            echo '```'
            grep -E '::|^(FAILED|ERROR|SKIPPED)|passed|failed|no tests ran' "$LOGS/pytest.log" \
                | tail -60
            echo '```'
        else
            echo "not run"
        fi
        echo
        echo "## Trainer benchmark: bench/bench_trainer.py"
        echo
        table_or_log "$WORK/bench.md" "$LOGS/bench.log"
        echo
        echo "## nGPT's ops: bench/bench_ngpt_ops.py"
        echo
        table_or_log "$WORK/ops.md" "$LOGS/ops.log"
        if [[ -s $LOGS/pip_check.log ]]; then
            echo
            echo "## pip check (lines about the carried packages)"
            echo
            echo '```'
            grep -iE 'deepspeed|megatron|pydantic|hjson|typing|annotated' "$LOGS/pip_check.log" \
                || echo "nothing about them"
            echo '```'
        fi
    } > "$report"
    # shellcheck disable=SC2046  # the folders that exist, as separate words
    tar czf "$OUT/logs.tar.gz" --exclude='checkpoints' --exclude='data_cache' -C "$WORK" logs \
        $(cd "$WORK" && ls -d runs prewarm 2>/dev/null)
    log "wrote $report, $OUT/metrics.jsonl, $OUT/logs.tar.gz"
}

# 1. Install the carried wheels beside the image's packages (nothing is fetched).
t=$(date +%s)
if compgen -G "$WHEELS/*.whl" > /dev/null; then
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE" "$WHEELS"/*.whl > "$LOGS/install.log" 2>&1; then
        phase install $(($(date +%s) - t)) "$(ls "$WHEELS"/*.whl | wc -l) wheels into $SITE"
    else
        phase install $(($(date +%s) - t)) "FAILED (see install.log)"
    fi
else
    phase install 0 "no wheels in $WHEELS: the installed packages are used"
fi
export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export CUDA_DEVICE_MAX_CONNECTIONS=1 PYTHONUNBUFFERED=1
"$PY" -m pip check > "$LOGS/pip_check.log" 2>&1

# 2. Everything the trainer imports must import; without that nothing else can run.
t=$(date +%s)
if ! "$PY" - "$LOGS/environment.md" > "$LOGS/imports.log" 2>&1 <<'EOF'
import platform
import sys

import deepspeed
import megatron.core
import pydantic
import torch

import megatron_ngpt.train  # noqa: F401
import megatron_ngpt.training.trainer  # noqa: F401  (what the trainer imports once started)
from megatron_ngpt.hardware import peak_bf16_tflops
from megatron_ngpt.models import triton_ops

if torch.cuda.is_available():
    name = torch.cuda.get_device_name(0)
    memory = torch.cuda.get_device_properties(0).total_memory / 2**30
    device = f"{name}, {memory:.0f} GiB, dense bf16 peak {peak_bf16_tflops(name)} TFLOP/s"
else:
    device = "no CUDA device"
triton = __import__("triton").__version__ if triton_ops.HAS_TRITON else "not installed"
with open(sys.argv[1], "w") as out:
    out.write(f"- device: {device}\n- Python {platform.python_version()}, torch "
              f"{torch.__version__} (CUDA {torch.version.cuda}), Triton {triton}, DeepSpeed "
              f"{deepspeed.__version__}, megatron-core {megatron.core.__version__}, pydantic "
              f"{pydantic.__version__}\n")
EOF
then
    phase imports $(($(date +%s) - t)) "FAILED: $(tail -1 "$LOGS/imports.log")"
    write_report
    exit 1
fi
phase imports $(($(date +%s) - t)) ok
if [[ $MODE == gpu ]]; then
    echo "- nvidia-smi: $(nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm \
        --format=csv,noheader 2>&1)" >> "$LOGS/environment.md"
fi

# 3. While the correctness tests run, fill torch.compile's caches for the compiled benchmark runs
#    (one untimed step each; two at a time where the GPU has the memory for it; at a lower CPU
#    priority than the tests, which have a deadline).
CONCURRENCY=1
if [[ $MODE == gpu ]]; then
    gib=$("$PY" -c "import torch; print(int(torch.cuda.get_device_properties(0).total_memory / 2**30))")
    ((gib >= 120)) && CONCURRENCY=2
fi
t_prewarm=$(date +%s)
nice -n 10 timeout $((PYTEST_S + 60)) "$PY" bench/bench_trainer.py --prewarm-only \
    --prewarm $CONCURRENCY --workdir "$WORK" --run-timeout-s $PYTEST_S "${BENCH_ARGS[@]}" \
    > "$LOGS/prewarm.log" 2>&1 &
PREWARM_PID=$!

t=$(date +%s)
timeout $PYTEST_S "$PY" -m pytest -v -m gpu tests/gpu -p no:cacheprovider -rfEs \
    > "$LOGS/pytest.log" 2>&1
rc=$?
summary=$(tail -1 "$LOGS/pytest.log" | tr -d '=' | xargs)
case $rc in
    0|5) phase "pytest -m gpu" $(($(date +%s) - t)) "$summary" ;;  # 5: all deselected (no GPU)
    124) phase "pytest -m gpu" $(($(date +%s) - t)) "TIMEOUT after $PYTEST_S s" ;;
    *) phase "pytest -m gpu" $(($(date +%s) - t)) "FAILED: $summary" ;;
esac
wait $PREWARM_PID
rc=$?
phase "compile prewarm (beside pytest)" $(($(date +%s) - t_prewarm)) \
    "$( ((rc == 0)) && echo ok || echo "exit $rc") ($(grep -c ': ok,' "$LOGS/prewarm.log") runs warmed)"

# 4. The trainer benchmark, within what is left (it skips runs it has no time for).
t=$(date +%s)
budget=$(($(left) - OPS_S - REPORT_S))
timeout $((budget + 60)) "$PY" bench/bench_trainer.py --workdir "$WORK" --budget-s $budget \
    --output "$WORK/bench.md" --raw "$OUT/metrics.jsonl" "${BENCH_ARGS[@]}" \
    > "$LOGS/bench.log" 2>&1
rc=$?
phase "trainer benchmark (budget $budget s)" $(($(date +%s) - t)) \
    "$( ((rc == 0)) && echo "all runs ok" || echo "exit $rc: see the table")"

# 5. nGPT's ops alone, with what is left.
t=$(date +%s)
ops_s=$(($(left) - REPORT_S))
if ((ops_s >= 20)); then
    timeout $ops_s "$PY" bench/bench_ngpt_ops.py --output "$WORK/ops.md" "${OPS_ARGS[@]}" \
        > "$LOGS/ops.log" 2>&1
    rc=$?
    phase "ops benchmark" $(($(date +%s) - t)) "$( ((rc == 0)) && echo ok || echo "exit $rc")"
else
    phase "ops benchmark" 0 "skipped: $ops_s s left"
fi

write_report
