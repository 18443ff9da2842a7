#!/usr/bin/env bash
# Stage-2 variants of the distillation (docs/RESULTS.md, issue 4, session 4): task internal-layer KD
# for STEPS steps from a finished pipeline's stage-1 output, then the default budget's stage 3.
# usage: benchmarks/kd_variants.sh NAME STEPS [extra `spikingbert distill` arguments for stage 2]
#   BASE (default runs/default): the pipeline output directory (teacher/ and stages/1-general/final)
#   THREADS (default 1), PRED_STEPS (default 600). Outputs go to runs/exp/NAME; --resume continues.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: $0 NAME STEPS [distill args...]" >&2; exit 2; }
name=$1; steps=$2; shift 2
base=${BASE:-runs/default}
[ -d "$base/stages/1-general/final" ] || { echo "$0: $base/stages/1-general/final missing (run the pipeline first)" >&2; exit 1; }
export OMP_NUM_THREADS=${THREADS:-1} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE
out=runs/exp/$name
.venv/bin/spikingbert distill --task sst2 --stage intermediate --teacher "$base/teacher" \
  --student "$base/stages/1-general/final" --steps "$steps" --lr 1e-4 --train-t-conv 8 \
  --out "$out/2-intermediate" --resume "$@"
.venv/bin/spikingbert distill --task sst2 --stage prediction --teacher "$base/teacher" \
  --student "$out/2-intermediate/final" --steps "${PRED_STEPS:-600}" --lr 5e-5 --train-t-conv 8 \
  --eval-every 200 --out "$out/3-prediction" --resume
