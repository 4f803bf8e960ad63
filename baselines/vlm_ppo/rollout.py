"""Rollout storage and collection: ``num_steps`` vector steps of sampled answers, as named (T, N) fields.

Collection only samples (no scoring pass): the behaviour log-probs and values are computed
afterwards by :func:`score_rollout`, in exactly the mini-batches of the first PPO epoch, so that
epoch's ratio starts at exactly 1 in any dtype (the same inputs through the same kernels).
Collection also keeps the log-probs the sampler drew each token with: in bf16 they differ from
the scored ones, and the trainer logs that gap and can reweight by it (truncated importance sampling).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from baselines.vlm_ppo.algo import action_logprob
from baselines.vlm_ppo.encoding import Encoded
from baselines.vlm_ppo.envs import TrainingEnvs
from baselines.vlm_ppo.policy import ActorCritic, boundaries_of, split_masks, train_without_dropout


@dataclass
class Rollout:
    """One update's experience. Tensors are (T, N): step ``t`` of env ``n``; lists are flat, index ``t * N + n``."""

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


@torch.no_grad()
def collect_rollout(policy: ActorCritic, envs: TrainingEnvs, episodes: EpisodeStats, num_steps: int,
                    max_new_tokens: int, missing_action_key: str, bootstrap_on_truncation: bool) -> Rollout:
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
        boundaries = boundaries_of(tokenizer, answers, missing_action_key)
        rollout.prompts += prompts
        rollout.answers += answers
        rollout.boundaries += boundaries
        rollout.sampled_logprobs[t] = weighted_logprob(token_logprobs, boundaries, policy.thought_coef)
        rollout.rewards[t] = torch.as_tensor(step.rewards, dtype=torch.float32)
        rollout.terminated[t] = torch.as_tensor(step.terminated)
        rollout.truncated[t] = torch.as_tensor(step.truncated)
        rollout.answer_tokens += sum(len(a) for a in answers)
        episodes.returns += step.rewards
        episodes.lengths += 1
        for i, info in enumerate(step.infos):
            rollout.parse_failures += not bool(info["parse_ok"])
            if step.terminated[i] or step.truncated[i]:
                episodes.finished.append((bool(info["success"]), float(episodes.returns[i]), int(episodes.lengths[i])))
                episodes.returns[i], episodes.lengths[i] = 0.0, 0
        obs = step.obs
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

    Transitions that fall in no mini-batch (the dropped remainder) are scored in one extra batch,
    since GAE needs every value. With ``with_reference``, also the initial policy's per-token
    log-probs (the LoRA adapter switched off: no second copy of the model). Runs in the same mode
    as the update passes (train mode, dropout off), so the first epoch's ratios start at exactly 1.
    """
    train_without_dropout(policy)
    covered = {j for b in batches for j in b}
    rest = [j for j in range(len(rollout.answers)) if j not in covered]
    flat_lp, flat_v = rollout.logprobs.view(-1), rollout.values.view(-1)
    flat_th, flat_ac = rollout.thought_logprobs.view(-1), rollout.action_logprobs.view(-1)
    ref: dict[int, torch.Tensor] = {}
    for batch in batches + ([rest] if rest else []):
        args = ([rollout.prompts[j] for j in batch], [rollout.answers[j] for j in batch],
                [rollout.boundaries[j] for j in batch])
        out = policy(*args)
        idx = torch.tensor(batch)
        flat_lp[idx], flat_v[idx] = out.logprob.float().cpu(), out.value.float().cpu()
        flat_th[idx], flat_ac[idx] = out.thought_logprob.float().cpu(), out.action_logprob.float().cpu()
        if with_reference:
            with policy.vlm.disable_adapter():
                ref_out = policy(*args)
            for k, j in enumerate(batch):
                ref[j] = ref_out.token_logprobs[k, :len(rollout.answers[j])].float().cpu()
    if with_reference:
        rollout.ref_token_logprobs = [ref[j] for j in range(len(rollout.answers))]
