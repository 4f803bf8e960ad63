"""The sampler/scorer gap per model family, in bf16, on tiny checkpoints with a 7B-like logit range.

``python benchmarks/behaviour_gap.py [--families llava qwen2_vl ...] [--dtype bfloat16] [--span 30]``

Per family: the tiny random checkpoint (``tests/tiny_families.py``) with its LM head
scaled so that its logits span ``--span`` units (``widen_logits``; a trained 7B model's span ~30),
then one PPO update of the real trainer (``train_ppo``: LoRA r8, T 0.2, NumberLine, 8 envs x 2
steps, up to 48 new tokens, the whole rollout in one mini-batch, one epoch, ``--tis-cap 2``).
Columns:

* gap mean / max: ``|scored - sampled|`` λ-weighted log-prob per policy-valid answer (nats), the
  trainer's ``charts/behaviour_logp_gap`` and ``_max``: ``sampled`` from generate's own
  distribution, ``scored`` from the teacher-forced pass that PPO takes as π_old;
* TIS weight min / max: ``min(exp(scored - sampled), 2)`` over the answers;
* loss without / with TIS: the epoch-0 policy loss over the whole rollout (ratio exactly 1, so
  ``-mean(A)`` of the normalised advantages, and ``-mean(w·A)`` with the weights): the first
  ``ppo_losses`` call of the update, recomputed without the weights.

Every answer counts as policy-valid (``--missing-action-key last5``): random models rarely write
an action key. In float32 (``--dtype float32``) the gap is ~1e-5 and TIS is off by default.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

# the tiny checkpoints are test support (tests/tiny_families.py), not part of the installed trainer
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def measure(family: str, dtype: str, span: float, workdir: Path) -> dict:
    import torch

    from baselines.vlm_ppo import train
    from baselines.vlm_ppo.config import Config
    from tests.tiny_families import CONV_TEMPLATES, build_tiny

    path = build_tiny(family, workdir / family / "model", logit_span=span)
    first_call, rollouts = [], []
    ppo_losses, score_rollout = train.ppo_losses, train.score_rollout

    def recording_losses(*args):
        out = ppo_losses(*args)
        first_call.extend([] if first_call else [(args, out)])
        return out

    def recording_scoring(policy, rollout, *args, **kwargs):
        rollouts.append(rollout)
        return score_rollout(policy, rollout, *args, **kwargs)

    train.ppo_losses, train.score_rollout = recording_losses, recording_scoring
    try:
        cfg = Config(output_dir=str(workdir / family / "run"), model=str(path), seed=0, threads=1, dtype=dtype,
                     lora_r=8, lora_alpha=16, temperature=0.2, conv_template=CONV_TEMPLATES[family],
                     num_envs=8, num_steps=2, num_updates=1, ppo_epochs=1, minibatch_size=16,
                     grad_accum_steps=1, max_new_tokens=48, missing_action_key="last5", eval_every=0, tis_cap=2.0)
        train.train_ppo(cfg)
    finally:
        train.ppo_losses, train.score_rollout = ppo_losses, score_rollout
    args, with_tis = first_call[0]
    without_tis = ppo_losses(*args[:9])
    rollout = rollouts[0]
    gaps = rollout.behaviour_gaps()
    weights = torch.exp(rollout.logprobs - rollout.sampled_logprobs)[rollout.policy_valid].clamp(max=2.0)
    return {"family": family, "answers": len(gaps), "tokens": rollout.answer_tokens / len(rollout.answers),
            "gap_mean": float(gaps.mean()), "gap_max": float(gaps.max()), "w_min": float(weights.min()),
            "w_max": float(weights.max()), "loss": float(without_tis["policy_loss"].detach()),
            "loss_tis": float(with_tis["policy_loss"].detach())}


def main() -> None:
    import torch

    from tests.tiny_families import FAMILIES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--span", type=float, default=30.0, help="logit span (max - min) the LM head is scaled to")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as workdir:
        rows = [measure(family, args.dtype, args.span, Path(workdir)) for family in args.families]
    print(f"\n{args.dtype}, logit span {args.span:g}, T 0.2, 16 answers of up to 48 tokens per family, TIS cap 2\n")
    print("| family | mean answer tokens | gap mean (nats/answer) | gap max | TIS weight min | TIS weight max | "
          "epoch-0 loss without TIS | with TIS |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['family']} | {r['tokens']:.1f} | {r['gap_mean']:.3g} | {r['gap_max']:.3g} | {r['w_min']:.3f} | "
              f"{r['w_max']:.3f} | {r['loss']:.4f} | {r['loss_tis']:.4f} |")


if __name__ == "__main__":
    main()
