#!/usr/bin/env bash
# Experiment (not a test): PPO from a weak SFT start on NumberLine, embedded tiny LLaVA, 2-core CPU.
# Claim under test: greedy held-out success goes from <= 40% to >= 80% within 30 minutes of PPO.
# SFT (vision alignment + SFT with the auxiliary reading loss, reading gate printed) runs first and
# is timed separately; PPO then gets 30 minutes of wall time (evaluations included) and a cosine LR
# schedule over 250 updates (about what fits in 30 min at ~7 s/update).
# Greedy success is evaluated exactly over every start state (eval/greedy_start_success, 300 seeds
# cover all 30 NumberLine starts; greedy answers are cached per observation).
# Writes runs/numberline_bench/{metrics.csv,curve.png,sft_log.csv,...} and copies them to docs/.
# See docs/training.md for the result.
set -euo pipefail
OUT=${OUT:-runs/numberline_bench}
uptime
python -m baselines.vlm_ppo demo --preset cpu-tiny --output-dir "$OUT" --num-updates 250 --time-limit-min 30 "$@"
uptime
mkdir -p docs
cp "$OUT/metrics.csv" docs/numberline_ppo_cpu_metrics.csv
cp "$OUT/curve.png" docs/numberline_ppo_cpu_curve.png
cp "$OUT/sft_log.csv" docs/numberline_ppo_cpu_sft_log.csv
cp "$OUT/sft/sft_metrics.json" docs/numberline_ppo_cpu_sft_metrics.json
