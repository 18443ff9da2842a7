#!/usr/bin/env bash
# The main job: set up the environment when missing, then teacher -> 3-stage distillation -> evaluation
# on SST-2 (default budget; offline). Extra arguments go to `spikingbert pipeline`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE
export GLUE_DIR="${GLUE_DIR:-$(cd .. && pwd)/shared/data/glue}"
exec .venv/bin/spikingbert pipeline --task sst2 --out "${OUT:-runs/sst2}" "$@"
