#!/usr/bin/env bash
# The training-budget study of FashionMNIST denoising (book chapter 9): each network at each
# budget is trained (resumable, in checkpoints/), exported to results/checkpoints and committed
# as soon as it is finished, so an interrupted run loses at most the network in progress.
#   scripts/train_budget.sh "100 400 1600" "unet resnet patchmlp"
set -euo pipefail
cd "$(dirname "$0")/.."
export LEMMSE_DATA="${LEMMSE_DATA:-../shared/data}"
PY="${PYTHON:-.venv/bin/python}"
STEPS_LIST="${1:-100 400 1600 6400}"
ARCHS="${2:-unet resnet patchmlp}"
for steps in $STEPS_LIST; do
  for arch in $ARCHS; do
    sel=(--dataset fashion-mnist --task denoising --physics agnostic --arch "$arch" --steps "$steps")
    "$PY" -m lemmse experiment train "${sel[@]}" --no-progress
    "$PY" -m lemmse experiment export "${sel[@]}"
    name=$(ls results/checkpoints/fashion-mnist_denoising_agnostic_"$arch"_P5_*_n10000_s"$steps"_*.pt)
    for try in 1 2 3 4 5; do
      git add -- "$name" && git commit -q -m "Training budget: FashionMNIST denoising $arch, $steps steps of 32 images (exported EMA, fp16)" \
        -- "$name" results/checkpoints/MANIFEST.json && break
      sleep 5
    done
    echo "done $arch $steps: $name"
  done
done
