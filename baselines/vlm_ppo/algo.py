"""Policy-gradient maths with no model in it: GAE, the group-relative advantages (GRPO, RLOO, GiGPO),
the clipped losses, truncated importance sampling, the KL estimate, the LR schedule."""

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


def returns_to_go(rewards: torch.Tensor, episode_end: torch.Tensor, gamma: float) -> torch.Tensor:
    """Discounted return-to-go ``Σ_k γ^k r_{t+k}`` of each step of whole episodes laid end to end (1-D).

    ``episode_end[t]`` marks an episode's last step (terminated or truncated: with no critic, a
    truncated episode's tail counts as zero). It is GAE with λ = 1 and a zero value function.
    """
    zeros = torch.zeros((len(rewards), 1))
    ends = episode_end.bool()[:, None]
    adv, _ = compute_gae(rewards.float()[:, None], zeros, ends, torch.zeros_like(ends), torch.zeros(1), zeros, gamma, 1.0)
    return adv[:, 0]


def group_normalise(values: torch.Tensor, groups: torch.Tensor, divide_by_std: bool, eps: float = 1e-6) -> torch.Tensor:
    """Each value minus the mean of its group (``groups`` (B,) ids), divided by the group's std + eps
    when ``divide_by_std``. A group of one, or of equal values, gives 0 (no signal, never nan)."""
    out = torch.zeros(len(values))
    for g in groups.unique():
        members = groups == g
        x = values[members].float()
        centred = x - x.mean()
        if divide_by_std and len(x) > 1:
            centred = centred / (x.std() + eps)
        out[members] = centred
    return out


def leave_one_out(values: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Each value minus the mean of the OTHER members of its group (RLOO's baseline); 0 in a group of one."""
    out = torch.zeros(len(values))
    for g in groups.unique():
        members = groups == g
        x = values[members].float()
        if len(x) > 1:
            out[members] = x - (x.sum() - x) / (len(x) - 1)
    return out


def group_advantages(rewards: torch.Tensor, episode_end: torch.Tensor, group: torch.Tensor, gamma: float, *,
                     baseline: str = "mean", divide_by_std: bool = True, step_weight: float = 0.0,
                     anchor: torch.Tensor | None = None) -> torch.Tensor:
    """Critic-free advantage of every step of whole episodes laid end to end; all inputs (B,).

    Episode level: each episode's return (the sum of its rewards) against the other episodes of
    its ``group`` (the ids of episodes played from the same start): ``baseline="mean"`` subtracts
    the group mean, divided by the group std when ``divide_by_std`` (GRPO);
    ``baseline="leave_one_out"`` subtracts the mean of the other members (RLOO). Every step of an
    episode gets its episode's advantage.

    Step level (GiGPO), with ``step_weight`` ω > 0: ``anchor`` (B,) ids the state each step acted
    in; steps of one group in the same state (of any episode, also one state visited twice) form an
    anchor group, in which each step's discounted return-to-go is normalised as above. The
    advantage is then the episode-level one plus ω times that.
    """
    ends = episode_end.bool()
    if len(ends) and not ends[-1]:
        raise ValueError("episode_end must mark the last step: only whole episodes have a return")
    episode = torch.cat([torch.zeros(1, dtype=torch.long), ends[:-1].long().cumsum(0)])  # episode index of each step
    returns = torch.zeros(int(episode[-1]) + 1 if len(episode) else 0).index_add_(0, episode, rewards.float())
    episode_group = group[ends]
    if baseline == "mean":
        per_episode = group_normalise(returns, episode_group, divide_by_std)
    elif baseline == "leave_one_out":
        per_episode = leave_one_out(returns, episode_group)
    else:
        raise ValueError(f"baseline must be 'mean' or 'leave_one_out', got {baseline!r}")
    advantages = per_episode[episode]
    if step_weight:
        if anchor is None:
            raise ValueError("a step-level advantage (step_weight > 0) needs the anchor state of every step")
        pairs = torch.stack([group, anchor], 1)
        anchor_group = pairs.unique(dim=0, return_inverse=True)[1]  # same group and same state
        advantages = advantages + step_weight * group_normalise(returns_to_go(rewards, ends, gamma), anchor_group,
                                                                divide_by_std)
    return advantages


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
               new_values: torch.Tensor | None, old_values: torch.Tensor | None, returns: torch.Tensor | None,
               clip: float, ratio_guard: float = 10.0, is_weight: torch.Tensor | None = None,
               value_clip: float = 0.0) -> dict[str, torch.Tensor]:
    """The clipped policy loss (over policy-valid samples only) and the value loss; all inputs (B,).

    ``is_weight`` (B,), when given (:func:`tis_weights`), multiplies each sample's clipped policy
    loss before the mean. ``ratio_dev`` is the largest ``|ratio - 1|`` of the batch (exactly 0
    before the first optimizer step of an update, when behaviour and scored policy are the same
    weights on the same batch). The value loss is clipped to ``value_clip`` around the old values
    (0: unclipped) and left out when ``new_values`` is None (a critic-free algorithm).
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
    out = {"policy_loss": policy_loss, "approx_kl": approx_kl, "clip_frac": clip_frac, "ratio_dev": ratio_dev}
    if new_values is not None:
        out["value_loss"] = value_loss(new_values, old_values, returns, value_clip)
    return out


def value_loss(new_values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip: float) -> torch.Tensor:
    """``0.5 * (V - R)^2``, or with ``clip > 0`` the larger of it and the same with V kept within
    ``clip`` of the old value (PPO's value clip; RL4VLM shares the policy's ε, on the raw return)."""
    loss = (new_values - returns) ** 2
    if clip > 0:
        v_clipped = old_values + (new_values - old_values).clamp(-clip, clip)
        loss = torch.max(loss, (v_clipped - returns) ** 2)
    return 0.5 * loss.mean()


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
