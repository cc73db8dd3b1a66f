#!/bin/bash
# Issue 11, stop 46: stack-aware training of OU-66 against controls that differ only in the loss
# (models/README.md, "Stop 46"). Needs the judged v4 stores and the shipped set's scores of
# reports/sky_check/stop45/chain.sh (label s45) in $J and $W/scores. About 25 minutes on two cores for the
# 16 000-cutout arms, 45 more for the 40 000-cutout pair.
set -ex
W=${W:-/work/s46}; J=${J:-/work/s45/judged}; M=${M:-$(cd "$(dirname "$0")/../../.." && pwd)}
T=$W/tr; mkdir -p $T $W/init $W/scores
cp $M/models/OU_66.pt $W/init/OU_66_Weights.pt          # start from the shipped OU-66 (the stop-32 recipe)
# stop 32's A66 training store (16 000: trX then negA) and 24 000 more of a fresh seed
lensengine -q simulate --kind training-mix --lens-fraction 0.5 -n 12000 --seed 131 --workers 2 --out $T/trX.zarr
lensengine -q simulate --kind training-mix --lens-fraction 0 -n 4000 --seed 132 --workers 2 --out $T/negA.zarr
lensengine -q simulate --kind training-mix --lens-fraction 0.5 -n 24000 --seed 141 --workers 2 --out $T/trY.zarr
lensengine -q store concat --out $T/trC.zarr $T/trX.zarr $T/negA.zarr
lensengine -q store concat --out $T/trD.zarr $T/trC.zarr $T/trY.zarr
# the other members' scores on the training stores (none of the shipped networks was trained on these seeds)
lensengine -q run --tiles $T/trC.zarr --out $T/trC.fits --scores $T/trC_scores --workers 2
lensengine -q run --tiles $T/trD.zarr --out $T/trD.fits --scores $T/trD_scores --workers 2
# (at stop 46 trD's table was joined from trC's and one of trY.zarr instead: ROW shifted by 16 000 and TILE set to
# the joined store's "cutouts"; the same networks on the same cutouts)

arm() {  # NAME STORE SEED [train options]: OU-66 one epoch from the shipped weights, scored on the judged stores
  local name=$1 store=$2 seed=$3; shift 3
  lensengine -q train --model OU-66 --tiles $T/$store.zarr --out $W/runs/$name --init-from $W/init --val $J/val4.zarr \
    --augment full --hard-negatives 0.1 --hard-boost 2 --l2sp 0.01 --lr 3e-4 --precision fp32 --min-arc-snr 15 \
    --threads 1 --batch-size 64 --epochs 1 --seed $seed "$@"
  mkdir -p $W/m_$name && cp $M/models/*.onnx $M/models/*.json $W/m_$name/ && cp $W/runs/$name/OU_66.onnx $W/m_$name/
  python $M/benchmarks/sky_check.py score --label $name --models $W/m_$name --only OU-66 --out $W/scores \
    $J/v4_lenses.zarr $J/v4_sky_202{6,7,8,9}.zarr $J/v4_hard.zarr $J/j0946.zarr $J/real_galaxies.zarr $J/val4.zarr \
    $J/frozen_nonlenses.zarr
}
for seed in 0 1; do  # two at a time, one core each
  arm A$seed trC $seed & arm S$seed trC $seed --stack-scores $T/trC_scores --stack-weight 0.5 & wait
  arm P$seed trC $seed --stack-scores $T/trC_scores --stack-weight 1.0 & wait
done
for seed in 0 1; do
  arm BA$seed trD $seed & arm BP$seed trD $seed --stack-scores $T/trD_scores --stack-weight 1.0 & wait
done
# every set with the shipped networks for the other six members and the stack refitted on val4
python $M/reports/sky_check/stop46/compare.py --work $W --out $M/reports/sky_check/stop46
