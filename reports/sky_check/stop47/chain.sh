#!/bin/bash
# Issue 11, stop 47: stack-aware training at smaller steps (OU-66) and of the other heavy member (OU-VIS)
# (models/README.md, "Stop 47"). Reuses the stores, the score tables and the shipped set's scores of
# reports/sky_check/stop46/chain.sh ($W, $J as there). About 12 minutes per OU-66 run and 35 per
# OU-VIS run (with its scoring), one core each: about 2 hours on two cores.
set -ex
W=${W:-/work/s46}; J=${J:-/work/s45/judged}; M=${M:-$(cd "$(dirname "$0")/../../.." && pwd)}
T=$W/tr; mkdir -p $W/initv
cp $M/models/OU_VIS.pt $W/initv/OU_VIS_Weights.pt       # start from the shipped OU-VIS (the stop-25 recipe)
STORES="$J/v4_lenses.zarr $J/v4_sky_2026.zarr $J/v4_sky_2027.zarr $J/v4_sky_2028.zarr $J/v4_sky_2029.zarr
  $J/v4_hard.zarr $J/j0946.zarr $J/real_galaxies.zarr $J/val4.zarr $J/frozen_nonlenses.zarr"

arm() {  # MODEL INIT NAME STORE SEED [train options]: one epoch from the shipped weights, scored on the judged stores
  local model=$1 init=$2 name=$3 store=$4 seed=$5; shift 5
  lensengine -q train --model $model --tiles $T/$store.zarr --out $W/runs/$name --init-from $W/$init \
    --val $J/val4.zarr --augment full --hard-negatives 0.1 --hard-boost 2 --l2sp 0.01 --lr 3e-4 --precision fp32 \
    --min-arc-snr 15 --threads 1 --batch-size 64 --epochs 1 --seed $seed "$@"
  python $M/benchmarks/sky_check.py score --label $name --models $W/runs/$name --only $model --out $W/scores $STORES
}
# OU-66 on the 40 000-cutout store, weight 1, at a third and a tenth of the stop-46 learning rate
arm OU-66 init LP0 trD 0 --lr 1e-4 --stack-scores $T/trD_scores.parquet --stack-weight 1.0 &
arm OU-66 init MP0 trD 0 --lr 3e-5 --stack-scores $T/trD_scores.parquet --stack-weight 1.0 & wait
# OU-VIS on the 16 000-cutout store (new to it), against its control
arm OU-VIS initv VA0 trC 0 & arm OU-VIS initv VP0 trC 0 --stack-scores $T/trC_scores --stack-weight 1.0 & wait
# seed 1 of both, and the OU-66 controls at the small step (run at stop 47 as one core came free)
arm OU-VIS initv VP1 trC 1 --stack-scores $T/trC_scores --stack-weight 1.0 &
{ arm OU-66 init MP1 trD 1 --lr 3e-5 --stack-scores $T/trD_scores.parquet --stack-weight 1.0
  arm OU-66 init MA0 trD 0 --lr 3e-5; arm OU-66 init MA1 trD 1 --lr 3e-5; arm OU-VIS initv VA1 trC 1; } & wait
python $M/reports/sky_check/stop46/compare.py --work $W --out $M/reports/sky_check/stop47 \
  --arms $M/reports/sky_check/stop47/arms.json --title "Stop 47: stack-aware OU-66 at smaller steps, stack-aware OU-VIS"
