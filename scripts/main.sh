#!/usr/bin/env bash
# The main job: set up the environment when missing, then teacher -> 3-stage distillation -> evaluation
# on SST-2 (default budget; offline). Extra arguments go to `spikingbert pipeline`, e.g. `--profile loihi`
# for the student made of stock Lava processes (docs/loihi_profile_design.md).
#
# The distillation runs data-parallel on the cores (torchrun, gloo): PROCS processes with one
# intra-op thread each step faster than one process with 2 intra-op threads (small ops scale
# poorly over threads; docs/RESULTS.md). The budget's batch of 32 is split between the processes, so the
# schedule is the same. PROCS=1 runs a single process; default: 2 on a machine with 2-3 cores,
# 4 on one with more (the rest of the cores become intra-op threads).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE
export GLUE_DIR="${GLUE_DIR:-$(cd .. && pwd)/shared/data/glue}"
cores=$(nproc)
procs=${PROCS:-$(( cores >= 4 ? 4 : (cores >= 2 ? 2 : 1) ))}
if [ "$procs" -le 1 ]; then
  exec .venv/bin/spikingbert pipeline --task sst2 --out "${OUT:-runs/sst2}" "$@"
fi
export OMP_NUM_THREADS=$(( cores / procs > 0 ? cores / procs : 1 ))
exec .venv/bin/torchrun --standalone --nproc_per_node "$procs" -m lava_spikingbert.cli \
  pipeline --task sst2 --out "${OUT:-runs/sst2}" "$@"
