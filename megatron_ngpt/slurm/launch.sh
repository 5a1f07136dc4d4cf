#!/usr/bin/env bash
# The one launcher behind every sbatch script in slurm/ (they only choose CONFIG).
#
# Inside a SLURM job: one srun task per GPU (one per node if the job gave no task count), each
# exporting RANK/LOCAL_RANK/WORLD_SIZE from SLURM_PROCID/SLURM_LOCALID and the step's task count,
# with MASTER_ADDR = the job's first node (no ssh, no hostfile). When the trainer exits 3
# (preempted, checkpoint saved) the job requeues itself and the next start resumes from RUN_DIR;
# when a rank crashes, the whole job ends at once.
# Outside SLURM: torchrun on this machine (NPROC processes).
#
# Environment: CONFIG (required; a file, or the name of a packaged config such as
# configs/ngpt_0.5b_4k.yaml), DATA_PATH, TOKENIZER_MODEL, RUN_DIR (--save; default
# runs/<job name>), OVERRIDES (key=value ...), TRAIN_ARGS (trainer arguments, appended last),
# PYTHON (default: the checkout's .venv/bin/python if present, else python3), TRAINER_MODULE,
# NPROC, MASTER_PORT, WANDB_* (passed through; WANDB_MODE=offline without WANDB_API_KEY).
# Relative paths are relative to the directory the job runs in (sbatch: the submit directory).
# See docs/slurm.md.
set -euo pipefail

die() { echo "launch.sh: $*" >&2; exit 2; }

[[ -n ${CONFIG:-} ]] || die "CONFIG is not set (e.g. CONFIG=configs/ngpt_0.5b_4k.yaml)"
if [[ -z ${PYTHON:-} ]]; then
  # Run as slurm/launch.sh of a checkout, the checkout is one folder up.
  checkout=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  if [[ -x $checkout/.venv/bin/python ]]; then PYTHON=$checkout/.venv/bin/python; else PYTHON=python3; fi
fi
config_name=$(basename "$CONFIG" .yaml)
RUN_DIR=${RUN_DIR:-runs/${SLURM_JOB_NAME:-$config_name}}
if [[ -z ${WANDB_API_KEY:-} ]]; then export WANDB_MODE=${WANDB_MODE:-offline}; fi
export PYTHONUNBUFFERED=1
# megatron-core's tensor-parallel communication must run in issue order with compute (docs/gpu.md).
export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}

# DATA_PATH, OVERRIDES and TRAIN_ARGS are space-separated lists (split here without globbing).
read -ra data_path <<<"${DATA_PATH:-}"
read -ra overrides <<<"${OVERRIDES:-}"
read -ra train_args <<<"${TRAIN_ARGS:-}"
# A batch log gets no progress bar (OVERRIDES can turn it back on: the last value wins).
[[ -z ${SLURM_JOB_ID:-} ]] || overrides=(logging.progress_bar=false "${overrides[@]}")
# The trainer applies its arguments in order, the last one winning: TRAIN_ARGS come last.
trainer=(-m "${TRAINER_MODULE:-megatron_ngpt.train}" --config "$CONFIG" "${overrides[@]}"
         --save "$RUN_DIR")
[[ -z ${TOKENIZER_MODEL:-} ]] || trainer+=(--tokenizer-model "$TOKENIZER_MODEL")
(( ${#data_path[@]} == 0 )) || trainer+=(--data-path "${data_path[@]}")
trainer+=("${train_args[@]}")

if [[ -z ${SLURM_JOB_ID:-} ]]; then
  nproc=${NPROC:-$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)}
  (( nproc > 0 )) || nproc=1
  echo "launch.sh: local run, $nproc process(es): $PYTHON ${trainer[*]}"
  status=0
  "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$nproc" "${trainer[@]}" \
    || status=$?
  # torchrun reports any failing worker as 1: the trainer's marker tells a preemption apart.
  if (( status != 0 )) && [[ -e $RUN_DIR/PREEMPTED ]]; then status=3; fi
  (( status != 3 )) || echo "launch.sh: preempted; checkpoint saved in $RUN_DIR, rerun to resume"
  exit "$status"
fi

MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
export MASTER_ADDR MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 40000))}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
# SLURM_NTASKS is set only when the job asked for a task count; without one, srun starts one task
# per node.
echo "launch.sh: job $SLURM_JOB_ID restart ${SLURM_RESTART_COUNT:-0}," \
     "${SLURM_NTASKS:-${SLURM_JOB_NUM_NODES:-1}} task(s) on" \
     "$SLURM_JOB_NODELIST, master $MASTER_ADDR:$MASTER_PORT: $PYTHON ${trainer[*]}"

# A rank that crashes ends the whole step at once (--kill-on-bad-exit), instead of leaving the
# others blocked in a collective until the time limit. Exit 3 (preempted, checkpoint saved) is
# not a crash: each task turns it into 0 and leaves a marker for the requeue decision below. The
# task's shell keeps a no-op trap, so a signal meant for the trainer (USR1, TERM) does not kill it.
# srun runs in the background so that a signal sent to this batch shell (--signal=B:USR1@T,
# scancel --batch) is forwarded to the tasks at once instead of killing the shell. srun 22.05 to
# 23.02 does not inherit --cpus-per-task from sbatch.
mkdir -p "$RUN_DIR"
export PREEMPTED_MARKER=$RUN_DIR/.preempted.$SLURM_JOB_ID
rm -f "$PREEMPTED_MARKER"
# shellcheck disable=SC2016
srun --kill-on-bad-exit=1 ${SLURM_CPUS_PER_TASK:+--cpus-per-task="$SLURM_CPUS_PER_TASK"} bash -c \
  'export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=${SLURM_STEP_NUM_TASKS:-$SLURM_NTASKS}
   trap : USR1 TERM
   "$@" && exit 0 || status=$?
   (( status != 3 )) || { touch "$PREEMPTED_MARKER"; exit 0; }
   exit "$status"' \
  task "$PYTHON" "${trainer[@]}" &
srun_pid=$!
trap 'echo "launch.sh: SIGUSR1, forwarding to the tasks"; kill -USR1 "$srun_pid" || true' USR1
status=0
while :; do
  wait "$srun_pid" && status=0 || status=$?
  kill -0 "$srun_pid" 2>/dev/null || break   # still running: wait was interrupted by the trap
done

if (( status == 0 )) && [[ -e $PREEMPTED_MARKER ]]; then
  rm -f "$PREEMPTED_MARKER"
  echo "launch.sh: trainer saved a checkpoint after preemption; requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID"
  exit 3
fi
(( status == 0 )) || echo "launch.sh: srun exited with status $status; see the task errors above"
exit "$status"
