"""Rollout storage and collection: ``num_steps`` vector steps of sampled answers, as named (T, N) fields
(PPO), or whole episodes of groups laid end to end in one column (the critic-free algorithms).

Collection only samples (no scoring pass): the behaviour log-probs and values are computed
afterwards by :func:`score_rollout`, in exactly the mini-batches of the first PPO epoch, so that
epoch's ratio starts at exactly 1 in any dtype (the same inputs through the same kernels).
Collection also keeps the log-probs the sampler drew each token with: in bf16 they differ from
the scored ones, and the trainer logs that gap and can reweight by it (truncated importance sampling).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from baselines.vlm_ppo.algo import action_logprob
from baselines.vlm_ppo.encoding import Encoded
from baselines.vlm_ppo.envs import TrainingEnvs
from baselines.vlm_ppo.policy import ActorCritic, boundaries_of, keep_format_failures, split_masks, train_without_dropout


@dataclass
class Rollout:
    """One update's experience. Tensors are (T, N): step ``t`` of env ``n``; lists are flat, index ``t * N + n``.
    A group rollout is one column (N = 1): its whole episodes end to end."""

    num_steps: int
    num_envs: int
    prompts: list[Encoded] = field(default_factory=list)
    """Encoded (prompt, image) of each transition: reused, never re-preprocessed, in every later pass."""
    answers: list[list[int]] = field(default_factory=list)
    """Sampled answer ids of each transition (stop token included)."""
    boundaries: list[int | None] = field(default_factory=list)
    """First action token of each answer; None when the answer has no action key (policy-invalid)."""
    rewards: torch.Tensor = field(init=False)
    """Reward of each step."""
    terminated: torch.Tensor = field(init=False)
    """The step ended its episode in a terminal state (no future value)."""
    truncated: torch.Tensor = field(init=False)
    """The step hit the step limit (its future value is ``final_values``)."""
    final_values: torch.Tensor = field(init=False)
    """V(final observation) of truncated steps (0 elsewhere)."""
    logprobs: torch.Tensor = field(init=False)
    """Behaviour λ-weighted log-probs, from :func:`score_rollout` (π_old of the PPO ratio)."""
    sampled_logprobs: torch.Tensor = field(init=False)
    """The same λ-weighted log-prob as ``logprobs``, from each token's fp32 log-prob under the
    distribution ``generate`` drew it from."""
    values: torch.Tensor = field(init=False)
    """V(prompt) of each step, from :func:`score_rollout`."""
    ref_token_logprobs: list[torch.Tensor] | None = None
    """Per-token log-probs under the initial policy (adapter disabled), when the KL penalty is on."""
    thought_logprobs: torch.Tensor = field(init=False)
    """Σ thought-token log-probs of each answer (logged: the paper compares their size with the action's)."""
    action_logprobs: torch.Tensor = field(init=False)
    """Σ action-token log-probs of each answer."""
    groups: list[int] | None = None
    """Group rollouts: the group-episode id of each step (episodes with one id started from the same seed)."""
    state_keys: list[str | None] | None = None
    """Group rollouts: ``info["state_key"]`` of the observation each step acted on (None where the envs give none)."""
    parse_failures: int = 0
    """Answers the env could not parse into an action."""
    answer_tokens: int = 0
    """Sampled tokens in all answers (for tokens/s)."""

    def __post_init__(self):
        shape = (self.num_steps, self.num_envs)
        self.rewards = torch.zeros(shape)
        self.terminated = torch.zeros(shape, dtype=torch.bool)
        self.truncated = torch.zeros(shape, dtype=torch.bool)
        self.final_values = torch.zeros(shape)
        self.logprobs, self.values, self.sampled_logprobs = torch.zeros(shape), torch.zeros(shape), torch.zeros(shape)
        self.thought_logprobs, self.action_logprobs = torch.zeros(shape), torch.zeros(shape)

    @property
    def policy_valid(self) -> torch.Tensor:
        """(T, N) True where the answer has an action key (it enters the policy loss)."""
        return torch.tensor([k is not None for k in self.boundaries]).view(self.num_steps, self.num_envs)

    def behaviour_gaps(self) -> torch.Tensor:
        """``|scored - sampled|`` λ-weighted log-prob of each policy-valid answer (1-D; nats per answer).

        The quantity the PPO ratio and the importance weight are built from; policy-invalid answers
        are left out (their λ-weighted log-prob is 0 on both sides and never enters the policy loss).
        """
        return (self.logprobs - self.sampled_logprobs).abs()[self.policy_valid]


@dataclass
class EpisodeStats:
    """Running return/length of each env's current episode and the finished episodes of this update."""

    returns: np.ndarray
    lengths: np.ndarray
    finished: list[tuple[bool, float, int]] = field(default_factory=list)

    def add_step(self, env: int, reward: float, ended: bool, success: bool) -> None:
        """Count one step of env ``env``; an ``ended`` episode moves to ``finished`` and its counters restart."""
        self.returns[env] += reward
        self.lengths[env] += 1
        if ended:
            self.finished.append((bool(success), float(self.returns[env]), int(self.lengths[env])))
            self.returns[env], self.lengths[env] = 0.0, 0


@torch.no_grad()
def collect_rollout(policy: ActorCritic, envs: TrainingEnvs, episodes: EpisodeStats, num_steps: int,
                    max_new_tokens: int, missing_action_key: str, bootstrap_on_truncation: bool,
                    keep_failures: FormatFailures | None = None) -> Rollout:
    """Sample ``num_steps`` answers per env from the current policy and step the envs with them."""
    policy.eval()  # no dropout (LoRA's included) in any pass of PPO
    tokenizer = policy.encoder.tokenizer
    rollout = Rollout(num_steps, envs.num_envs)
    obs = envs.obs
    for t in range(num_steps):
        prompts = policy.encoder.encode_observations(obs, envs.prompt_for)
        answers, token_logprobs = policy.generate(prompts, greedy=False, max_new_tokens=max_new_tokens,
                                                  with_logprobs=True)
        texts = tokenizer.batch_decode(answers, skip_special_tokens=True)
        step = envs.step(texts)
        cut = [i for i, o in enumerate(step.final_obs) if o is not None]
        if cut and bootstrap_on_truncation:
            finals = policy.encoder.encode_observations({"text": [step.final_obs[i]["text"] for i in cut],
                                                         "image": [step.final_obs[i]["image"] for i in cut]},
                                                        envs.prompt_for)
            rollout.final_values[t, cut] = policy.get_value(finals).float().cpu()
        boundaries = answer_boundaries(policy, answers, step.infos, missing_action_key, keep_failures)
        rollout.prompts += prompts
        rollout.answers += answers
        rollout.boundaries += boundaries
        rollout.sampled_logprobs[t] = weighted_logprob(token_logprobs, boundaries, policy.thought_coef)
        rollout.rewards[t] = torch.as_tensor(step.rewards, dtype=torch.float32)
        rollout.terminated[t] = torch.as_tensor(step.terminated)
        rollout.truncated[t] = torch.as_tensor(step.truncated)
        rollout.answer_tokens += sum(len(a) for a in answers)
        for i, info in enumerate(step.infos):
            rollout.parse_failures += not bool(info["parse_ok"])
            episodes.add_step(i, step.rewards[i], step.terminated[i] or step.truncated[i], info["success"])
        obs = step.obs
    return rollout


class FormatFailures(NamedTuple):
    """``--keep-format-failures``: which key-less answers stay in the policy loss."""

    penalised: bool
    """Also those given the format penalty (the envs run ``on_parse_failure="penalty"``), not only cut-off ones."""


def answer_boundaries(policy: ActorCritic, answers: list[list[int]], infos: list[dict], missing_action_key: str,
                      keep_failures: FormatFailures | None) -> list[int | None]:
    """Each answer's first action token (None: left out of the policy loss), given the env's verdict on it."""
    boundaries = boundaries_of(policy.encoder.tokenizer, answers, missing_action_key)
    if keep_failures is None:
        return boundaries
    penalised = [keep_failures.penalised and not info["parse_ok"] for info in infos]
    return keep_format_failures(answers, boundaries, policy.stop_ids, penalised)


class _Transition(NamedTuple):
    prompt: Encoded
    answer: list[int]
    boundary: int | None
    sampled_logprob: float
    reward: float
    terminated: bool
    truncated: bool
    state_key: str | None


@torch.no_grad()
def collect_group_rollout(policy: ActorCritic, envs: TrainingEnvs, episodes: EpisodeStats, min_steps: int,
                          max_new_tokens: int, missing_action_key: str,
                          keep_failures: FormatFailures | None = None) -> Rollout:
    """Whole episodes of every group: each group plays an episode from one seed, its finished
    members idling until the last one ends, and starts its next one (from the next seed) while
    fewer than ``min_steps`` env steps were taken this rollout. So every group plays at least one
    episode, and the rollout holds at least ``min_steps`` steps and at most one episode per env more.

    The steps are laid out in one column (T = steps, N = 1), episode after episode, grouped by
    group episode (``Rollout.groups``), with the state key each step acted on.
    """
    policy.eval()
    tokenizer = policy.encoder.tokenizer
    size = envs.group_size
    envs.start_groups(range(envs.num_groups))
    active = np.ones(envs.num_envs, dtype=bool)
    rounds = [0] * envs.num_groups  # group episodes started this rollout, per group
    played: dict[tuple[int, int, int], list[_Transition]] = {}  # (group, round, member) -> its steps
    taken, parse_failures, answer_tokens = 0, 0, 0
    while active.any():
        idx = np.flatnonzero(active)
        obs = envs.obs
        prompts = policy.encoder.encode_observations({"text": [obs["text"][i] for i in idx],
                                                      "image": [obs["image"][i] for i in idx]}, envs.prompt_for)
        answers, token_logprobs = policy.generate(prompts, greedy=False, max_new_tokens=max_new_tokens,
                                                  with_logprobs=True)
        texts = [""] * envs.num_envs
        for k, text in zip(idx, tokenizer.batch_decode(answers, skip_special_tokens=True)):
            texts[k] = text
        keys = list(envs.state_keys)
        step, ended = envs.step_groups(texts, active)
        infos = [step.infos[i] for i in idx]
        boundaries = answer_boundaries(policy, answers, infos, missing_action_key, keep_failures)
        sampled = weighted_logprob(token_logprobs, boundaries, policy.thought_coef)
        for k, i in enumerate(idx):
            g = i // size
            played.setdefault((g, rounds[g], i % size), []).append(_Transition(
                prompts[k], answers[k], boundaries[k], float(sampled[k]), float(step.rewards[i]),
                bool(step.terminated[i]), bool(step.truncated[i]), keys[i]))
            over = bool(step.terminated[i] or step.truncated[i])
            episodes.add_step(i, step.rewards[i], over, infos[k]["success"])
            active[i] = not over
            parse_failures += not bool(infos[k]["parse_ok"])
        taken += len(idx)
        answer_tokens += sum(len(a) for a in answers)
        restart = [g for g in ended if taken < min_steps]
        for g in restart:
            rounds[g] += 1
            active[g * size:(g + 1) * size] = True
        if restart:
            envs.start_groups(restart)
    return _column_rollout(played, parse_failures, answer_tokens)


def _column_rollout(played: dict[tuple[int, int, int], list[_Transition]], parse_failures: int,
                    answer_tokens: int) -> Rollout:
    """The episodes of a group rollout in one column, ordered by group, round, member."""
    order = sorted(played)
    group_ids = {key[:2]: n for n, key in enumerate(dict.fromkeys(k[:2] for k in order))}
    steps = [(group_ids[key[:2]], t) for key in order for t in played[key]]
    rollout = Rollout(len(steps), 1, parse_failures=parse_failures, answer_tokens=answer_tokens)
    rollout.prompts = [t.prompt for _, t in steps]
    rollout.answers = [t.answer for _, t in steps]
    rollout.boundaries = [t.boundary for _, t in steps]
    rollout.groups = [g for g, _ in steps]
    rollout.state_keys = [t.state_key for _, t in steps]
    column = lambda values, dtype=torch.float32: torch.tensor(values, dtype=dtype)[:, None]  # noqa: E731
    rollout.sampled_logprobs = column([t.sampled_logprob for _, t in steps])
    rollout.rewards = column([t.reward for _, t in steps])
    rollout.terminated = column([t.terminated for _, t in steps], torch.bool)
    rollout.truncated = column([t.truncated for _, t in steps], torch.bool)
    return rollout


def weighted_logprob(token_logprobs: list[torch.Tensor], boundaries: list[int | None], thought_coef: float) -> torch.Tensor:
    """(B,) λ-weighted log-prob of each answer from its per-token log-probs, as :class:`ActorCritic` computes it."""
    padded = torch.nn.utils.rnn.pad_sequence(token_logprobs, batch_first=True)
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(lp), dtype=torch.bool) for lp in token_logprobs],
                                           batch_first=True)
    thought, action = split_masks(mask, boundaries)
    return action_logprob(padded, thought, action, thought_coef)


def minibatches(num_samples: int, minibatch_size: int, generator: torch.Generator) -> list[list[int]]:
    """A random permutation cut into full mini-batches (the incomplete last one is dropped)."""
    perm = torch.randperm(num_samples, generator=generator).tolist()
    return [perm[s:s + minibatch_size] for s in range(0, num_samples - minibatch_size + 1, minibatch_size)]


@torch.no_grad()
def score_rollout(policy: ActorCritic, rollout: Rollout, batches: list[list[int]], with_reference: bool) -> None:
    """Behaviour log-probs and values of every transition, in the given mini-batches (epoch 0's).

    Transitions that fall in no mini-batch (the dropped remainder, or under several processes the
    mini-batches cut so that every process takes as many) are scored too, in batches no larger than
    the largest given one, since GAE needs every value. With ``with_reference``, also the initial policy's per-token
    log-probs (the LoRA adapter switched off: no second copy of the model). Runs in the same mode
    as the update passes (train mode, dropout off), so the first epoch's ratios start at exactly 1.
    """
    train_without_dropout(policy)
    covered = {j for b in batches for j in b}
    rest = [j for j in range(len(rollout.answers)) if j not in covered]
    flat_lp, flat_v = rollout.logprobs.view(-1), rollout.values.view(-1)
    flat_th, flat_ac = rollout.thought_logprobs.view(-1), rollout.action_logprobs.view(-1)
    ref: dict[int, torch.Tensor] = {}
    size = max((len(b) for b in batches), default=len(rest)) or 1
    for batch in batches + [rest[s:s + size] for s in range(0, len(rest), size)]:
        args = ([rollout.prompts[j] for j in batch], [rollout.answers[j] for j in batch],
                [rollout.boundaries[j] for j in batch])
        out = policy(*args)
        idx = torch.tensor(batch)
        flat_lp[idx] = out.logprob.float().cpu()
        if out.value is not None:
            flat_v[idx] = out.value.float().cpu()
        flat_th[idx], flat_ac[idx] = out.thought_logprob.float().cpu(), out.action_logprob.float().cpu()
        if with_reference:
            with policy.vlm.disable_adapter():
                ref_out = policy(*args)
            for k, j in enumerate(batch):
                ref[j] = ref_out.token_logprobs[k, :len(rollout.answers[j])].float().cpu()
    if with_reference:
        rollout.ref_token_logprobs = [ref[j] for j in range(len(rollout.answers))]
