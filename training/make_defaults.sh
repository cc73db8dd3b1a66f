#!/usr/bin/env bash
# The sky recipe (issue 11, docs/training.md "The sky recipe"): fine-tune the seven networks from the
# paper's published weights on the realistic simulations, with
#   --augment full          the eight flips/90-degree turns per cutout, plus extra noise, a small blur and a
#                           sky gradient on the raw bands before preprocessing;
#   --hard-negatives F      the fraction F of negatives scored highest in an epoch is seen twice in the next;
#   --l2sp A                L2-SP: A/2 * sum((w - w0)^2) keeps the weights near the published ones (w0);
# each model within a wall-time budget, keeping the weights of the lowest validation loss.
#
#   bash training/make_defaults.sh WORKDIR [MIN_66_FAMILY] [MIN_200_FAMILY] [MODEL=MINUTES ...]
#
# Budgets are minutes of wall time per model and per invocation (--max-time, default 60 / 120);
# MODEL=MINUTES overrides one model (e.g. OU-VIS=180; MINUTES 0 skips it).  Every step resumes: rerun the
# same command to continue where the budget (or a crash) stopped it.
#
# Settings (environment; defaults in brackets):
#   TRAIN_STORE [WORKDIR/train_mix.zarr]  VAL_STORE [WORKDIR/val_mix.zarr]   stores to train / validate on;
#       simulated when absent: TRAIN_KIND [training-mix], N_TRAIN [30000], N_VAL [3000],
#       LENS_FRACTION [0.5], seeds 101 (train) and 111 (validation)
#   MODELS ["OU-J OU-Y OU-H OU-JYH OU-66 OU-VIS OU-200"]   RUNS [WORKDIR/runs]
#   AUGMENT [full]  HARD_NEG [0.1]  HARD_BOOST [2]  L2SP [0.01]  LR [3e-4]  EPOCHS [250]  PATIENCE [8]
#   MAX_TRAIN_66 / MAX_TRAIN_200 [all]: cap the training cutouts per family (CPU budget)
#   MIN_ARC_SNR [none]: leave training lenses with arc S/N below this out (--min-arc-snr; validation keeps all)
#   DEVICE [auto]  PRECISION [auto: bf16 on CUDA and AMX/AVX512-BF16 CPUs, else fp32]
#   THREADS [torch default]  LOADER_WORKERS [1; 4-8 on a GPU machine]
#   PUBLISHED [../shared/published-weights]
#   INSTALL [0]: 1 copies the exported models into models/, refits OU-T-SNE on the validation store and
#       evaluates against the published weights on TEST_STORE [WORKDIR/test_mix.zarr, seed 121].  Ship a
#       model only where it beats the current defaults and the published weights (issue 11, item 5).
# L2-SP ablation (same data, another run directory):
#   L2SP=0 RUNS=WORKDIR/runs-l2sp0 bash training/make_defaults.sh WORKDIR 60 120
set -euo pipefail
work=${1:?usage: make_defaults.sh WORKDIR [MIN_66] [MIN_200] [MODEL=MINUTES ...]}
min66=${2:-60}
min200=${3:-120}
shift $(( $# < 3 ? $# : 3 ))
declare -A budget_of=()
for arg in "$@"; do
  case $arg in
    OU-*=*) budget_of[${arg%%=*}]=${arg#*=} ;;
    *) echo "make_defaults.sh: expected MODEL=MINUTES after the budgets, got '$arg'" >&2; exit 2 ;;
  esac
done
repo=$(cd "$(dirname "$0")/.." && pwd)
shared=${LENSENGINE_SHARED:-$repo/../shared}
published=${PUBLISHED:-$shared/published-weights}
mkdir -p "$work"
work=$(cd "$work" && pwd)
train_store=${TRAIN_STORE:-$work/train_mix.zarr}
val_store=${VAL_STORE:-$work/val_mix.zarr}
test_store=${TEST_STORE:-$work/test_mix.zarr}
kind=${TRAIN_KIND:-training-mix}
lens_fraction=${LENS_FRACTION:-0.5}
runs=${RUNS:-$work/runs}
cd "$work"

simulate() {  # STORE N SEED: simulate the training kind unless the store exists
  [ -f "$1/zarr.json" ] || lensengine -q simulate --kind "$kind" -n "$2" --seed "$3" \
    --lens-fraction "$lens_fraction" --out "$1"
}
simulate "$val_store" "${N_VAL:-3000}" 111
simulate "$train_store" "${N_TRAIN:-30000}" 101

for model in ${MODELS:-OU-J OU-Y OU-H OU-JYH OU-66 OU-VIS OU-200}; do
  case $model in
    OU-VIS|OU-200) budget=$min200; cap=${MAX_TRAIN_200:-} ;;
    *) budget=$min66; cap=${MAX_TRAIN_66:-} ;;
  esac
  budget=${budget_of[$model]:-$budget}
  [ "$budget" = 0 ] && continue
  extra=()
  [ -f "$runs/$model/last.pt" ] && extra+=(--resume)
  [ -n "$cap" ] && extra+=(--max-train "$cap")
  [ -n "${MIN_ARC_SNR:-}" ] && extra+=(--min-arc-snr "$MIN_ARC_SNR")
  [ -n "${THREADS:-}" ] && extra+=(--threads "$THREADS")
  lensengine -q train --model "$model" --data "$train_store" --val "$val_store" --out "$runs/$model" \
    --init-from "$published" --augment "${AUGMENT:-full}" --hard-negatives "${HARD_NEG:-0.1}" \
    --hard-boost "${HARD_BOOST:-2}" --l2sp "${L2SP:-0.01}" --lr "${LR:-3e-4}" \
    --epochs "${EPOCHS:-250}" --early-stop "${PATIENCE:-8}" --max-time "$budget" \
    --device "${DEVICE:-auto}" --precision "${PRECISION:-auto}" --loader-workers "${LOADER_WORKERS:-1}" \
    "${extra[@]}"
done

[ "${INSTALL:-0}" = 1 ] || { echo "trained into $runs (INSTALL=1 to copy into models/ and evaluate)"; exit 0; }

mkdir -p "$repo/models"
for f in "$runs"/*/OU_*.onnx; do
  cp "$f" "$repo/models/"
  cp "${f%.onnx}.pt" "$repo/models/"
done
# OU-T-SNE is fitted on the validation set (never on the test set), grid smoothing 2 cells as before.
lensengine -q run --tiles "$val_store" --models "$repo/models" --out val_candidates.fits --scores val_scores.parquet \
  --threshold 0.5
lensengine -q tsne fit --scores val_scores.parquet --out "$repo/models/ou_tsne.npz" --smoothing 2 \
  --plot "$repo/models/ou_tsne.png"
simulate "$test_store" "${N_TEST:-3000}" 121
[ -d published ] || lensengine -q models import-published "$published" --out published
lensengine -q evaluate --models "$repo/models" --models "published=published" --data "$test_store" --out evaluation
cp evaluation/report.md "$repo/models/evaluation.md"
cp evaluation/report.json "$repo/models/evaluation.json"
cp evaluation/roc.png "$repo/models/roc.png" 2>/dev/null || true
