#!/bin/sh
# The subset of the reduced protocol run in this session (2 shared cores, torch on 1 thread).
set -e
nbssm experiment state-tracking --models linear_cde --lengths 3,6,10 --blocks 1,2 \
  --max-steps 2000 --time-budget 240 --n-val-eval 2048 --threads 1 --no-progress \
  --out benchmarks/results/state_tracking/linear_cde
nbssm experiment state-tracking --models mamba --lengths 3,6 --blocks 1,2 \
  --max-steps 2000 --time-budget 240 --n-val-eval 2048 --threads 1 --no-progress \
  --out benchmarks/results/state_tracking/mamba
