#!/bin/bash
# Issue 11, stop 45: the judged v4 stores made again, a fit pool of their own seeds, the shipped networks' scores,
# the physics features, and the judge (models/README.md, "Stop 45"). About 45 minutes on two cores.
set -ex
W=${W:-/work/s45}; M=${M:-$(cd "$(dirname "$0")/../../.." && pwd)}
J=$W/judged; P=$W/fitpool; mkdir -p $J $P
for s in 2026 2027 2028 2029; do lensengine -q simulate --kind sky-negatives -n 5000 --seed $s --workers 2 --out $J/v4_sky_$s.zarr; done
lensengine -q simulate --kind survey-lenses -n 2000 --seed 404 --workers 2 --out $J/v4_lenses.zarr
lensengine -q simulate --kind hard-negatives -n 2000 --seed 305 --workers 2 --out $J/v4_hard.zarr
lensengine -q simulate --kind training-mix --lens-fraction 0.5 -n 3000 --seed 113 --workers 2 --out $J/val4.zarr
lensengine -q realcheck --out $J/rc
ln -sfn $J/rc/j0946.zarr $J/j0946.zarr; ln -sfn $J/rc/real_galaxies.zarr $J/real_galaxies.zarr
lensengine -q simulate --kind sky-negatives -n 6000 --seed 3101 --workers 2 --out $P/fit_sky.zarr
lensengine -q simulate --kind hard-negatives -n 1000 --seed 3102 --workers 2 --out $P/fit_hard.zarr
lensengine -q simulate --kind survey-lenses -n 3000 --seed 3103 --workers 2 --out $P/fit_lenses.zarr
# the issue's hidden-check negatives, made with the simulator of b9282e6 (the frozen set of the proxy)
mkdir -p $W/b928/src $W/b928/pkg/lensengine && git -C $M archive b9282e6 | tar -x -C $W/b928/src
cp $W/b928/src/src/lensengine/__init__.py $W/b928/pkg/lensengine/
for d in catalogs engine models plugins training; do ln -sfn $W/b928/src/$d $W/b928/pkg/lensengine/$d; done
PYTHONPATH=$W/b928/pkg python -c "from lensengine.training.simulate import simulate_store as s; \
    s('$J/frozen_nonlenses.zarr', 'non-lenses', 1000, 4242, workers=2, progress=False, overwrite=True)"
STORES="$J/frozen_nonlenses.zarr $J/v4_lenses.zarr $J/v4_sky_2026.zarr $J/v4_sky_2027.zarr $J/v4_sky_2028.zarr $J/v4_sky_2029.zarr $J/v4_hard.zarr
        $J/j0946.zarr $J/real_galaxies.zarr $J/val4.zarr $P/fit_sky.zarr $P/fit_hard.zarr $P/fit_lenses.zarr"
python $M/benchmarks/sky_check.py score --label s45 --models $M/models --out $W/scores $STORES
python $M/benchmarks/physics_features.py extract --out $W/feats $STORES
python $M/benchmarks/physics_features.py judge --scores $W/scores --label s45 --features $W/feats \
    --fit val4,fit_sky,fit_hard,fit_lenses --tail --out $M/reports/sky_check/stop45
python $M/benchmarks/physics_features.py judge --scores $W/scores --label s45 --features $W/feats \
    --fit val4 --tail --out $M/reports/sky_check/stop45/fit_val4
