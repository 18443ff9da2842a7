#!/usr/bin/env bash
# Set up the environment when missing, then run the test suite (small configs; ~minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# OMP_WAIT_POLICY=PASSIVE: spinning OpenMP threads slow torch ~20x when the 2 cores are shared
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE
exec .venv/bin/python -m pytest -q "$@"
