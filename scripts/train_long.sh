#!/usr/bin/env bash
# Train the grid at the "cpu-long" scale (12 800 steps of 32 images, issue 11 part 2), one
# network at a time, in the order of the issue; export each finished network to
# results/checkpoints and commit it (checkpoint + MANIFEST.json only) before the next starts,
# so that an interrupted session loses at most the network in training (whose partial
# checkpoint under checkpoints/ resumes when the same command runs again); networks already in
# results/checkpoints are skipped, so a fresh clone goes on where the last session stopped.
#
#   LEMMSE_DATA=... scripts/train_long.sh            # all, in order; finished ones are skipped
#   scripts/train_long.sh "cifar10 denoising unet agnostic"   # one selection
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEFAULT=(
  "cifar10 denoising unet agnostic" "cifar10 denoising resnet agnostic" "cifar10 denoising patchmlp agnostic"
  "fashion-mnist inpainting unet agnostic" "fashion-mnist inpainting resnet agnostic" "fashion-mnist inpainting patchmlp agnostic"
  "fashion-mnist deblurring unet agnostic" "fashion-mnist deblurring resnet agnostic" "fashion-mnist deblurring patchmlp agnostic"
  "fashion-mnist inpainting unet aware" "fashion-mnist inpainting resnet aware" "fashion-mnist inpainting patchmlp aware"
  "fashion-mnist deblurring unet aware" "fashion-mnist deblurring resnet aware" "fashion-mnist deblurring patchmlp aware"
  "cifar10 inpainting unet agnostic" "cifar10 deblurring unet agnostic"
  "ffhq32 denoising unet agnostic" "ffhq32 denoising resnet agnostic" "ffhq32 denoising patchmlp agnostic"
  "ffhq32 inpainting unet agnostic" "ffhq32 deblurring unet agnostic"
)
[ $# -gt 0 ] && SELECTIONS=("$@") || SELECTIONS=("${DEFAULT[@]}")
for sel in "${SELECTIONS[@]}"; do
  read -r dataset task arch physics <<<"$sel"
  filt=(--scale cpu-long --dataset "$dataset" --task "$task" --arch "$arch" --physics "$physics")
  name=$("$PY" -c "import sys; from lemmse.experiments import Experiment as E; print(E(*sys.argv[1:]).config('cpu-long').filename())" \
         "$dataset" "$task" "$arch" "$physics") || { echo "unknown selection: $sel"; exit 1; }
  if [ -f "results/checkpoints/$name" ]; then echo "already committed: $sel ($name)"; continue; fi
  before=$(git ls-files results/checkpoints | sort)
  echo "== $(date +%T) $sel"
  "$PY" -m lemmse experiment train "${filt[@]}" --compile --no-progress --root checkpoints || { echo "training failed: $sel"; exit 1; }
  "$PY" -m lemmse experiment export "${filt[@]}" --root checkpoints || { echo "export failed: $sel"; exit 1; }
  new=$(comm -13 <(echo "$before") <(ls results/checkpoints/*.pt | sort))
  [ -z "$new" ] && { echo "already committed: $sel"; continue; }
  for try in 1 2 3 4 5 6; do
    git add $new results/checkpoints/MANIFEST.json \
      && git commit -q -m "Grid at 12 800 steps (cpu-long): $dataset $task $physics $arch (exported EMA, fp16, torch.compile)" \
         -- $new results/checkpoints/MANIFEST.json && break
    sleep 5
  done
  echo "committed: $new"
done
