#!/bin/sh
# Second part of this session's subset (after run_subset.sh): S4 at L=3, and the trained
# Figure 1 rows (item 5) with a reduced budget.
set -e
nbssm experiment state-tracking --models s4 --lengths 3 --blocks 1,2 \
  --max-steps 2000 --time-budget 180 --n-val-eval 2048 --threads 1 --no-progress \
  --out benchmarks/results/state_tracking/s4
nbssm experiment signature-tasks --n-paths 5000 --models dense,diagonal,mamba --trained mamba_1,mamba_2 \
  --train-steps 2000 --train-seconds 120 --threads 1 --no-progress \
  --out benchmarks/results/state_tracking/figure1_trained
