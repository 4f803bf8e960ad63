"""Trainer throughput per model family on its tiny random checkpoint (CPU).

``python benchmarks/trainer_throughput.py [--families llava qwen2_vl ...] [--batch 4] [--repeats 3]``

Per family: rollout tokens/s (sampling answers of up to ``--new-tokens`` tokens for a batch of
NumberLine prompts), update samples/s (teacher-forced forward + backward of the same batch through
the trainer's ``ActorCritic``), and the process's peak RSS after the family ran. Each family runs in
its own subprocess, so peak RSS is that family's own. Absolute numbers are of a toy model on a
shared CPU; the columns compare families under the same code path.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# the tiny checkpoints are test support (tests/tiny_families.py), not part of the installed trainer
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def measure(family: str, batch: int, new_tokens: int, repeats: int) -> dict:
    import numpy as np
    import torch

    from baselines.vlm_ppo.encoding import Encoder
    from baselines.vlm_ppo.policy import ActorCritic, load_policy
    from tests.tiny_families import build_tiny
    from vlm_envs.text import build_prompt

    torch.set_num_threads(1)
    path = build_tiny(family, tempfile.mkdtemp() + "/m")
    processor, vlm = load_policy(str(path))
    template = "llava_v1" if family.startswith("llava") else "chat_template"
    policy = ActorCritic(vlm, Encoder(processor, vlm.config, template), temperature=1.0, thought_coef=0.5)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (300, 300, 3), dtype=np.uint8) for _ in range(batch)]
    prompts = policy.encoder.encode([build_prompt("numberline", "")] * batch, frames)
    policy.generate(prompts, greedy=False, max_new_tokens=4)  # warm-up: first shapes are slow
    tokens, t0 = 0, time.perf_counter()
    for _ in range(repeats):
        answers = policy.generate(prompts, greedy=False, max_new_tokens=new_tokens)
        tokens += sum(len(a) for a in answers)
    rollout = tokens / (time.perf_counter() - t0)
    params = [p for p in policy.parameters() if p.requires_grad]
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = policy(prompts, answers, [None] * batch)
        (out.logprob.sum() + out.value.sum()).backward()
        for p in params:
            p.grad = None
    update = repeats * batch / (time.perf_counter() - t0)
    return {"family": family, "params_M": sum(p.numel() for p in policy.parameters()) / 1e6,
            "prompt_tokens": len(prompts[0]), "rollout_tokens_per_s": rollout, "update_samples_per_s": update,
            "peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    from tests.tiny_families import FAMILIES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.batch, args.new_tokens, args.repeats)))
        return
    rows = []
    for family in args.families:
        out = subprocess.run([sys.executable, __file__, "--one", family, "--batch", str(args.batch),
                              "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"batch {args.batch}, up to {args.new_tokens} new tokens, {args.repeats} repeats, 1 thread\n")
    print("| family | params (M) | prompt tokens | rollout tokens/s | update samples/s | peak RSS (MB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['family']} | {r['params_M']:.2f} | {r['prompt_tokens']} | {r['rollout_tokens_per_s']:.0f} | "
              f"{r['update_samples_per_s']:.1f} | {r['peak_rss_MB']:.0f} |")


if __name__ == "__main__":
    main()
