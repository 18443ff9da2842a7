#!/usr/bin/env bash
# Set up the environment when missing, then run the test suite (small configs; ~minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONWARNINGS=ignore::DeprecationWarning
exec .venv/bin/python -m pytest -q "$@"
