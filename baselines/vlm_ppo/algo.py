"""PPO maths with no model in it: GAE, the clipped losses, truncated importance sampling, the KL estimate, the LR schedule."""

from __future__ import annotations

import math

import torch


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, terminated: torch.Tensor, truncated: torch.Tensor,
                next_value: torch.Tensor, final_values: torch.Tensor, gamma: float, gae_lambda: float,
                bootstrap_on_truncation: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns for a (T, N) rollout.

    Step ``t`` of env ``n`` ends its episode if ``terminated`` or ``truncated``. A terminated step
    has no future value. A truncated step bootstraps from ``final_values[t, n]``, the value of the
    episode's final observation (or is treated as terminal when ``bootstrap_on_truncation`` is
    False, as the reference did). Either way no advantage flows across the episode boundary.
    ``next_value`` (N,) is the value of the observation after the last step.
    """
    steps = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(next_value)
    for t in reversed(range(steps)):
        following = next_value if t == steps - 1 else values[t + 1]
        ended = (terminated[t] | truncated[t]).float()
        tail = final_values[t] * (truncated[t] & ~terminated[t]).float() if bootstrap_on_truncation else 0.0
        next_v = following * (1.0 - ended) + tail
        delta = rewards[t] + gamma * next_v - values[t]
        last = delta + gamma * gae_lambda * (1.0 - ended) * last
        advantages[t] = last
    return advantages, advantages + values


def action_logprob(token_lp: torch.Tensor, thought_mask: torch.Tensor, action_mask: torch.Tensor,
                   thought_coef: float) -> torch.Tensor:
    """log π = λ·Σ thought-token log-probs + Σ action-token log-probs, summed in fp32 (bf16 sums are noisier than the clip range)."""
    token_lp = token_lp.float()
    return thought_coef * (token_lp * thought_mask).sum(-1) + (token_lp * action_mask).sum(-1)


def tis_weights(scored_logp: torch.Tensor, sampled_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance weights ``min(exp(scored - sampled), cap)``, detached; inputs (B,).

    ``sampled_logp`` is the log-prob of each answer under the distribution ``generate`` drew it
    from, ``scored_logp`` the same answer's log-prob from the teacher-forced pass that PPO takes as
    π_old. In bf16 the two differ (other kernels, a KV cache, bf16-rounded logits), so the samples
    come from a slightly different policy than the one PPO corrects for; the weight reweights
    them to π_old, truncated at ``cap`` so that a rare large ratio cannot dominate the batch.
    """
    if cap <= 0:
        raise ValueError(f"cap must be > 0 (0 turns truncated importance sampling off upstream), got {cap}")
    return (scored_logp.detach().float() - sampled_logp.detach().float()).exp().clamp(max=cap)


def ppo_losses(new_logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, policy_valid: torch.Tensor,
               new_values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip: float,
               ratio_guard: float = 10.0, is_weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The clipped policy loss (over policy-valid samples only) and the clipped value loss; all inputs (B,).

    ``is_weight`` (B,), when given (:func:`tis_weights`), multiplies each sample's clipped policy
    loss before the mean. ``ratio_dev`` is the largest ``|ratio - 1|`` of the batch (exactly 0
    before the first optimizer step of an update, when behaviour and scored policy are the same
    weights on the same batch).
    """
    valid = policy_valid.bool()
    log_ratio = (new_logp - old_logp)[valid]
    ratio = log_ratio.exp()
    adv = advantages[valid]
    if valid.any():
        clipped = ratio.clamp(1.0 - clip, 1.0 + clip) * adv
        if ratio_guard > 0 and bool((ratio > ratio_guard).any()):
            per_sample = -clipped  # the reference's guard against exploding ratios
        else:
            per_sample = -torch.min(ratio * adv, clipped)
        if is_weight is not None:
            per_sample = per_sample * is_weight[valid]
        policy_loss = per_sample.mean()
        with torch.no_grad():
            approx_kl = ((ratio - 1.0) - log_ratio).mean()
            clip_frac = ((ratio - 1.0).abs() > clip).float().mean()
            ratio_dev = (ratio - 1.0).abs().max()
    else:
        policy_loss = new_logp.sum() * 0.0
        approx_kl = clip_frac = ratio_dev = torch.zeros((), device=new_logp.device)
    v_clipped = old_values + (new_values - old_values).clamp(-clip, clip)
    value_loss = 0.5 * torch.max((new_values - returns) ** 2, (v_clipped - returns) ** 2).mean()
    return {"policy_loss": policy_loss, "value_loss": value_loss, "approx_kl": approx_kl, "clip_frac": clip_frac,
            "ratio_dev": ratio_dev}


def kl_to_reference(token_logprobs: torch.Tensor, ref_token_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean per-token KL(π || π_ref) estimate ``exp(d) - d - 1`` with ``d = log π_ref - log π`` (non-negative,
    unbiased under samples from π), over the tokens in ``mask``; 0 when the mask is empty."""
    d = (ref_token_logprobs - token_logprobs)[mask]
    return (d.exp() - d - 1.0).mean() if d.numel() else token_logprobs.sum() * 0.0


def cosine_schedule(num_updates: int, lr: float, end_lr: float):
    """LambdaLR factor: cosine from ``lr`` to ``end_lr`` over ``num_updates`` steps, then flat (never rises)."""

    def factor(step: int) -> float:
        progress = min(step / max(num_updates, 1), 1.0)
        return (end_lr + 0.5 * (lr - end_lr) * (1.0 + math.cos(math.pi * progress))) / lr

    return factor
