#!/usr/bin/env bash
# The x2 super-resolution networks of book chapter 15 (lemmse.experiments.SR_GRID): each network
# is trained (resumable, in checkpoints/), exported to results/checkpoints and committed with
# the manifest as soon as it is finished, so an interrupted run loses at most the network in
# progress. FashionMNIST first (the chapter's main figure), one training at a time, 2 threads.
#   scripts/train_sr.sh                                  # all six
#   scripts/train_sr.sh "fashion-mnist" "unet resnet"    # a subset
set -euo pipefail
cd "$(dirname "$0")/.."
export LEMMSE_DATA="${LEMMSE_DATA:-../shared/data}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-2}"
PY="${PYTHON:-.venv/bin/python}"
DATASETS="${1:-fashion-mnist cifar10}"
ARCHS="${2:-unet resnet patchmlp}"
for dataset in $DATASETS; do
  for arch in $ARCHS; do
    sel=(--grid sr --dataset "$dataset" --task superresolution --physics agnostic --arch "$arch")
    "$PY" -m lemmse experiment train "${sel[@]}" --device cpu --no-progress
    "$PY" -m lemmse experiment export "${sel[@]}"
    name=$(ls results/checkpoints/"$dataset"_superresolution_agnostic_"$arch"_P5_*.pt)
    for try in 1 2 3 4 5 6 7 8 9 10; do
      git add -- "$name" && git commit -q -m "Super-resolution x2: $dataset $arch, SR_GRID network (exported EMA, fp16)" \
        -- "$name" results/checkpoints/MANIFEST.json && break
      sleep 5
    done
    echo "done $dataset $arch: $name"
  done
done
