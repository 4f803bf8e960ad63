#!/usr/bin/env bash
# Experiment (not a test): PPO from a weak SFT start on NumberLine, embedded tiny LLaVA, 2-core CPU.
# Claim under test: greedy held-out success goes from <= 40% to >= 80% within 30 minutes of PPO.
# Writes runs/numberline_bench/{metrics.csv,curve.png,sft_log.csv,...} and copies them to docs/. See docs/training.md for the result.
set -euo pipefail
OUT=${OUT:-runs/numberline_bench}
python -m baselines.vlm_ppo demo --preset cpu-tiny --output-dir "$OUT" --time-limit-min 30 "$@"
mkdir -p docs
cp "$OUT/metrics.csv" docs/numberline_ppo_cpu_metrics.csv
cp "$OUT/curve.png" docs/numberline_ppo_cpu_curve.png
cp "$OUT/sft_log.csv" docs/numberline_ppo_cpu_sft_log.csv
