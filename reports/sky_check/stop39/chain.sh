#!/bin/bash
# Issue 11, stop 39: the at-scale job rehearsed on this CPU (OU-66), then the judged v4 stores and their scores.
set -x
cd /work/s39
export LENSENGINE_SHARED=/work/shared
date
python -m lensengine.training.at_scale run --out /work/s39/cpu65 --work /work/s39/cpu65w --models OU-66 --device cpu --workers 2 --minutes 65 > cpu65.log 2>&1
date
J=/work/s39/judged; mkdir -p $J
lensengine -q store concat --out $J/v4_sky.zarr /work/s35/sky20k.zarr:5000
for s in 2027 2028 2029; do lensengine -q simulate --kind sky-negatives -n 5000 --seed $s --workers 2 --out $J/v4_sky_$s.zarr; done
lensengine -q simulate --kind survey-lenses -n 2000 --seed 404 --workers 2 --out $J/v4_lenses.zarr
lensengine -q simulate --kind hard-negatives -n 2000 --seed 305 --workers 2 --out $J/v4_hard.zarr
lensengine -q realcheck --out $J/rc
ln -sfn $J/rc/j0946.zarr $J/j0946.zarr; ln -sfn $J/rc/real_galaxies.zarr $J/real_galaxies.zarr
ln -sfn /work/s39/cpu65w/val.zarr $J/val4.zarr
date
STORES="$J/v4_lenses.zarr $J/v4_sky.zarr $J/v4_sky_2027.zarr $J/v4_sky_2028.zarr $J/v4_sky_2029.zarr $J/v4_hard.zarr $J/j0946.zarr $J/real_galaxies.zarr $J/val4.zarr"
python /work/main/benchmarks/sky_check.py score --label s39 --models /work/main/models --out /work/s39/scores $STORES
mkdir -p /work/s39/k66models && cp /work/main/models/* /work/s39/k66models/ 2>/dev/null; cp /work/s39/cpu65w/runs/OU-66/OU_66.onnx /work/s39/k66models/OU_66.onnx
python /work/main/benchmarks/sky_check.py score --label k66 --models /work/s39/k66models --only OU-66 --out /work/s39/scores $STORES
date
echo CHAIN DONE
