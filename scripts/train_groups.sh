#!/usr/bin/env bash
# The networks of chapter 14 (symmetry): FashionMNIST denoising, n = 1 000, the U-Net and the
# ResNet plain and averaged over D4; each is exported and committed as soon as it is finished.
set -euo pipefail
cd "$(dirname "$0")/.."
export LEMMSE_DATA="${LEMMSE_DATA:-../shared/data}"
PY="${PYTHON:-.venv/bin/python}"
for spec in "resnet translations" "unet d4" "resnet d4"; do
  set -- $spec
  sel=(--grid analysis --dataset fashion-mnist --task denoising --physics agnostic --arch "$1" --n-train 1000 --group "$2")
  "$PY" -m lemmse experiment train "${sel[@]}" --no-progress
  "$PY" -m lemmse experiment export "${sel[@]}"
  g=$([ "$2" = translations ] && echo "" || echo "_g$2")
  name=$(ls results/checkpoints/fashion-mnist_denoising_agnostic_"$1"_P5_w*"$g"_n1000_s800_*.pt)
  for try in 1 2 3 4 5; do
    git add -- "$name" && git commit -q -m "Chapter 14 network: FashionMNIST denoising $1, n = 1000, group $2 (exported EMA, fp16)" \
      -- "$name" results/checkpoints/MANIFEST.json && break
    sleep 5
  done
  echo "done $1 $2: $name"
done
