#!/usr/bin/env bash
# ngpt 1B at 4k context on 8-GPU nodes: sbatch slurm/ngpt_1b_4k.sh (from the repo root, after
# mkdir -p logs), or bash slurm/ngpt_1b_4k.sh for a local torchrun run. Options: docs/slurm.md.
#SBATCH --job-name=ngpt_1b_4k
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --mem=0
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --output=logs/%x-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=USR1@180
#SBATCH --requeue
export CONFIG=${CONFIG:-configs/ngpt_1b_4k.yaml}
# A batch job runs a copy of this script from the spool dir: the repo is REPO or the submit dir.
REPO=${REPO:-${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}}
launcher=$REPO/slurm/launch.sh
[[ -f $launcher ]] || { echo "$launcher not found: sbatch from the repo root" >&2; exit 2; }
exec bash "$launcher"
