#!/usr/bin/env bash
# The limited-data regime: CIFAR-10 with PreAct ResNet-18 trained on a
# class-balanced 10%, 20% and 50% of the training set (5,000 / 10,000 /
# 25,000 images), all six methods, three seeds; the recipe is otherwise
# cifar10_preact_resnet18.yaml (200 epochs, batch 128, SGD 0.1 momentum 0.9,
# weight decay 5e-4, cosine, rho 0.05).
#
#   bash recipes/limited_data_sweep.sh                     # everything
#   SEEDS=0 FRACTIONS="0.1" bash recipes/limited_data_sweep.sh --methods erm dgmix
#
# Extra arguments go to every gmix-compare call. The subset is drawn with the
# run's seed (keras_gmix.data.balanced_subset_indices): for one seed every
# method sees the same images. Killed? Run the same command again: finished
# runs are read back and an unfinished one resumes from its last epoch.
# Time: see recipes/README.md (the 10% sweep is the smallest recipe).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/limited-cifar10}
SEEDS=${SEEDS:-"0 1 2"}
FRACTIONS=${FRACTIONS:-"0.1 0.2 0.5"}
for fraction in $FRACTIONS; do
  # shellcheck disable=SC2086  # SEEDS is a list of words
  gmix-compare --config recipes/cifar10_preact_resnet18.yaml --train-fraction "$fraction" \
    --seeds $SEEDS --output "$OUT/fraction-$fraction" "$@"
done
# One table over all fractions: rows per method and training-set size.
gmix-compare --collect "$OUT"
