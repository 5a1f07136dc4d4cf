#!/usr/bin/env bash
# CI step before the test suite: install (apt) and start the one-node SLURM cluster that
# tests/slurm/test_slurm.py submits to. CI runs as root on a fresh Debian machine.
set -euo pipefail
exec bash "$(dirname "$0")/../tests/slurm/start_cluster.sh" start
