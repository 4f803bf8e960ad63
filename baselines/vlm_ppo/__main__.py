"""Command line: ``python -m baselines.vlm_ppo {sft-data,sft,ppo,eval,demo} [--field value ...]``.

``python -m baselines.vlm_ppo --help`` lists every config field with its documentation.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

from vlm_envs.optional import require


def _require_train_extra() -> None:
    for module in ("torch", "transformers", "accelerate", "tqdm"):
        require(module, "train", "the PPO baseline")


def _require_model_packages(model: str) -> None:
    """A built-in model's own packages, checked before any work (``demo`` makes its SFT data first)."""
    if model == "smollm2-vlm":
        from baselines.vlm_ppo.smollm2 import gguf_path

        gguf_path()


def main(argv: list[str] | None = None) -> int:
    from baselines.vlm_ppo.config import parse_args

    command, cfg = parse_args(argv)
    _require_train_extra()
    if command != "sft-data":
        _require_model_packages(cfg.model)
    if cfg.deterministic:
        from baselines.vlm_ppo.device import use_deterministic_algorithms

        use_deterministic_algorithms()
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    from baselines.vlm_ppo import sft, train
    from baselines.vlm_ppo.logger import read_metrics

    if command == "sft-data":
        sft.generate_sft_data(cfg)
    elif command == "sft":
        sft.train_sft(cfg, train.resolve_model(cfg))
    elif command == "ppo":
        train.train_ppo(cfg)
    elif command == "eval":
        import torch

        from baselines.vlm_ppo.device import training_device
        from baselines.vlm_ppo.evaluation import evaluate

        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        policy = train.build_policy(dataclasses.replace(cfg, lora_r=0, gradient_checkpointing=False))
        policy.to(training_device())
        result = {mode: evaluate(cfg, policy, greedy=mode == "greedy")
                  for mode in (("greedy", "sampled") if cfg.eval_sampled else ("greedy",))}
        print(json.dumps(result, indent=2))
    elif command == "demo":
        t0 = time.time()
        sft.ensure_sft_data(cfg)
        sft_dir = sft.train_sft(cfg, train.resolve_model(cfg))
        t_sft = time.time() - t0
        train.train_ppo(dataclasses.replace(cfg, model=str(sft_dir)))
        rows = read_metrics(Path(cfg.output_dir) / "metrics.csv")
        evals = [r for r in rows if r.get("eval/greedy_success")]
        before, after = evals[0], evals[-1]
        print(f"\nSFT {t_sft / 60:.1f} min (incl. data, vision alignment, reading gate), "
              f"PPO {(time.time() - t0 - t_sft) / 60:.1f} min")
        gate = json.loads((sft_dir / "sft_metrics.json").read_text())
        if "read/all" in gate:
            print(f"reading gate after SFT: both numbers read right in {gate['read/all']:.2f} of "
                  f"{gate['read/states']:.0f} held-out states")
        for mode, key in (("greedy, every start state", "eval/greedy_start_success"),
                          ("greedy", "eval/greedy_success"), ("sampled", "eval/sampled_success")):
            if before.get(key):
                print(f"held-out {mode} success: before PPO {float(before[key]):.2f} -> after PPO {float(after[key]):.2f}")
        print(f"curve: {Path(cfg.output_dir) / 'curve.png'}   metrics: {Path(cfg.output_dir) / 'metrics.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
