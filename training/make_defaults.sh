#!/usr/bin/env bash
# The recipe that made the shipped default models (models/*.onnx, models/README.md).
#
#   bash training/make_defaults.sh WORKDIR [MINUTES_66_FAMILY] [MINUTES_200_FAMILY]
#
# 1. simulates the training, validation and test sets (fixed seeds; skipped if present),
# 2. fine-tunes the seven networks from the paper's published weights with the paper's recipe
#    (Adam 3e-4, class-weighted cross-entropy; bf16 autocast where the CPU has it), each within a
#    wall-time budget, keeping the weights of the lowest validation loss,
# 3. copies the exported ONNX models (and their torch weights) into models/,
# 4. scores the validation set and fits OU-T-SNE on it (models/ou_tsne.npz),
# 5. evaluates ours against the published weights on the test set (models/evaluation.*).
# Every step resumes: rerun the same command after an interruption.
set -euo pipefail
work=${1:?usage: make_defaults.sh WORKDIR [MIN_66] [MIN_200]}
min66=${2:-6}
min200=${3:-14}
repo=$(cd "$(dirname "$0")/.." && pwd)
shared=${LENSENGINE_SHARED:-$repo/../shared}
mkdir -p "$work"
cd "$work"

[ -f val.zarr/zarr.json ] || lensengine -q simulate --kind mixed -n 2000 --seed 202 --out val.zarr --workers 1
[ -f train.zarr/zarr.json ] || lensengine -q simulate --kind mixed -n 8000 --seed 101 --out train.zarr --workers 1
[ -f test.zarr/zarr.json ] || lensengine -q simulate --kind mixed -n 2000 --seed 303 --out test.zarr --workers 1

for model in OU-J OU-Y OU-H OU-JYH OU-66 OU-VIS OU-200; do
  case $model in OU-VIS|OU-200) budget=$min200 ;; *) budget=$min66 ;; esac
  resume=""; [ -f "runs/$model/last.pt" ] && resume="--resume"
  lensengine -q train --model "$model" --data train.zarr --val val.zarr --out "runs/$model" \
    --epochs 250 --early-stop 8 --max-time "$budget" --precision auto \
    --init-from "$shared/published-weights" $resume
done

mkdir -p "$repo/models"
for f in runs/*/OU_*.onnx; do
  cp "$f" "$repo/models/"
  cp "${f%.onnx}.pt" "$repo/models/"
done

# OU-T-SNE is fitted on the validation set (never on the test set). Grid smoothing of 2 cells was chosen on a
# held-out half of the validation set (AUROC 0.973 / F1 0.954 against 0.914 / 0.942 for the paper's plain grid).
lensengine -q run --tiles val.zarr --models "$repo/models" --out val_candidates.fits --scores val_scores.parquet \
  --threshold 0.5
lensengine -q tsne fit --scores val_scores.parquet --out "$repo/models/ou_tsne.npz" --smoothing 2 --plot "$repo/models/ou_tsne.png"

[ -d published ] || lensengine -q models import-published "$shared/published-weights" --out published
lensengine -q evaluate --models "$repo/models" --models "published=published" --data test.zarr --out evaluation
cp evaluation/report.md "$repo/models/evaluation.md"
cp evaluation/report.json "$repo/models/evaluation.json"
cp evaluation/roc.png "$repo/models/roc.png" 2>/dev/null || true
