"""Reading the state from the image: an auxiliary objective for the vision path, and the reading gate.

A policy that cannot read the digits of NumberLine plays a state-independent policy (at most ~50%
greedy success), and one that cannot read Blackjack's cards learns to stand on every hand (37.9%),
so PPO can only reach high success if the image features carry the numbers to the language model.
Three tools: what CPU learning probes showed the embedded model (the first and the last) and the
pretrained SmolLM2 VLM (caption alignment) need:

* **Auxiliary reading objective** (:class:`ReadingHead`, :func:`reading_loss`): a linear probe on the
  *projected image tokens* (what the language model sees) predicts each number the CoT answer
  states about the image (:data:`READING_TASKS`: NumberLine's target and current number,
  Blackjack's player total and dealer card, the point games' card values) as a class. Used alone
  in a short vision alignment stage (tower + projector, like LLaVA's stage 1) and added to the SFT loss.
* **Caption alignment** (:func:`caption`): the same numbers as a short answer the *frozen* language
  model must give about the image alone (LLaVA stage 1's captioning objective). A probe can read
  features the language model cannot: this stage puts the numbers where a pretrained LM reads them.
* **Reading gate** (:func:`reading_accuracy`): greedy answers on every distinct held-out state
  (oracle episodes from the evaluation seeds), with the CoT's number fields compared to the truth.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class ReadingTask:
    """The numbers one env's CoT states about its image, and how to find them in an answer."""

    fields: tuple[str, ...]
    """Names of the numbers (``read/<name>`` in the gate, underscores for spaces)."""
    classes: int
    """Values 0 .. classes-1 are readable; a larger value counts as unknown."""
    patterns: tuple[str, ...]
    """One regex per field whose first group is the number (the CoT's own wording, :mod:`cot`)."""


def _card_patterns(n: int) -> tuple[str, ...]:
    """The k-th number of the CoT's ``"cards": [a, b, ...]`` list, for k = 1..n."""
    return tuple(r'"cards":\s*\[' + r"\s*\d+\s*," * k + r"\s*(\d+)" for k in range(n))


READING_TASKS: dict[str, ReadingTask] = {
    # The two digits of the frame.
    "numberline": ReadingTask(("target number", "current number"), 10,
                              (r'"target number":\s*"(\d+)"', r'"current number":\s*"(\d+)"')),
    # The player's total (4..21 while a decision is due) and the dealer's face-up card (2..11).
    "blackjack": ReadingTask(("player points", "dealer points"), 22,
                             (r"I have (\d+) points", r"the dealer has (\d+) points")),
    # Card values 1..10 (J, Q, K count 10), in the order the CoT lists them.
    "ezpoints": ReadingTask(("card 1", "card 2"), 11, _card_patterns(2)),
    "points24": ReadingTask(("card 1", "card 2", "card 3", "card 4"), 11, _card_patterns(4)),
}
"""Per prompt task, what the model must read from the image. ALFWorld's schematic has no such numbers."""
NO_READING = ReadingTask((), 1, ())
_COMPILED = {task: [re.compile(p) for p in spec.patterns] for task, spec in READING_TASKS.items()}


def reading_task(task: str) -> ReadingTask:
    """The :class:`ReadingTask` of a prompt task (:data:`NO_READING` where nothing is read)."""
    return READING_TASKS.get(task, NO_READING)


CAPTION_QUESTION = "Which numbers does the image show?"
"""The question of the caption alignment: the image alone, asked for the numbers of :func:`caption`."""


def caption(task: str, values: Sequence[int]) -> str:
    """The numbers of ``task``'s image as one line, e.g. ``target number: 4, current number: 0``."""
    return ", ".join(f"{field}: {value}" for field, value in zip(reading_task(task).fields, values))


def read_fields(text: str, task: str = "numberline") -> list[int]:
    """The integer value of each field of ``task`` in ``text``; -1 where missing or out of range."""
    out = []
    for pattern in _COMPILED.get(task, []):
        m = pattern.search(text)
        out.append(int(m.group(1)) if m and int(m.group(1)) < READING_TASKS[task].classes else -1)
    return out


def image_tokens(policy, images: dict) -> torch.Tensor:
    """The projected image tokens (B, tokens, hidden): exactly what the LM sees at the image positions.

    ``images`` are an encoded batch's image inputs, read by the policy encoder's image path (the
    model's own ``get_image_features``, or RL4VLM's plain tokens in ``reference`` mode), so this
    works for any family whose frames all give the same number of tokens.
    """
    features = policy.encoder.image_features(policy.vlm, {k: v.to(policy.device) for k, v in images.items()})
    return torch.stack(list(features)).float()


class ReadingHead(nn.Module):
    """A linear probe ``Linear(tokens * hidden, fields * classes)`` on the flattened image tokens
    (defaults: NumberLine's two digits).

    (A probe on mean-pooled tokens stayed at chance in 100 steps on NumberLine: the digits occupy
    few patches and pooling needs position-aware features first; the flattened probe only asks
    each patch to encode what it shows.)
    """

    def __init__(self, tokens: int, hidden_size: int, fields: int = 2, classes: int = 10):
        super().__init__()
        self.fields, self.classes = fields, classes
        self.linear = nn.Linear(tokens * hidden_size, fields * classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(tokens.flatten(1)).view(-1, self.fields, self.classes)


def reading_loss(head: ReadingHead, policy, images: dict, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Cross-entropy of the reading head against ``labels`` (B, fields; -1 = unknown) and its accuracy."""
    logits = head(image_tokens(policy, images))
    labels = labels.to(logits.device)
    loss = nn.functional.cross_entropy(logits.reshape(-1, head.classes), labels.reshape(-1), ignore_index=-1)
    known = labels >= 0
    acc = float((logits.argmax(-1) == labels)[known].float().mean()) if known.any() else float("nan")
    return loss, acc


def heldout_states(cfg, episodes: int = 200) -> list[dict]:
    """Distinct states of oracle episodes from the evaluation seeds: image, prompt text, true fields, oracle action."""
    from baselines.vlm_ppo import cot
    from baselines.vlm_ppo.envs import held_out, make_env

    env = make_env(held_out(cfg))
    u = env.unwrapped
    task = u.prompt_task
    states: dict[str, dict] = {}
    for k in range(episodes):
        obs, info = env.reset(seed=cfg.eval_seed + k)
        done = False
        while not done:
            name = cot.oracle_name(u)
            key = hashlib.sha1(obs["image"].tobytes() + obs["text"].encode()).hexdigest()
            if key not in states:
                truth = cot.answer(task, info, name)  # the CoT answer states the numbers, with or without cfg.cot
                states[key] = {"image": np.array(obs["image"]), "text": obs["text"], "fields": read_fields(truth, task),
                               "action": name}
            obs, _, term, trunc, info = env.step(cot.env_action(u, name))
            done = term or trunc
    env.close()
    return list(states.values())


@torch.no_grad()
def reading_accuracy(cfg, policy, states: Sequence[dict] | None = None) -> dict[str, float]:
    """The reading gate: greedy answers on every distinct held-out state.

    Returns the fraction of states whose CoT reads each field of the task right (NumberLine:
    ``read/target_number``, ``read/current_number``; Blackjack: ``read/player_points``,
    ``read/dealer_points``; point games: ``read/card_1`` ...), all right (``read/all``), and whose action is the oracle's
    (``read/oracle_action``; low by design after a corrupted SFT), over ``read/states`` states.
    """
    from baselines.vlm_ppo.envs import make_env
    from vlm_envs.text import build_prompt
    from vlm_envs.text.parsing import extract_action_value

    states = heldout_states(cfg) if states is None else states
    env = make_env(cfg)
    task, params = env.unwrapped.prompt_task, dict(env.unwrapped.prompt_params)
    env.close()
    was_training = policy.training
    policy.eval()
    fields = reading_task(task).fields
    right = np.zeros((len(states), len(fields)), bool)
    action_ok = np.zeros(len(states), bool)
    for s0 in range(0, len(states), 32):
        chunk = states[s0:s0 + 32]
        prompts = policy.encoder.encode([build_prompt(task, s["text"], cot=cfg.cot, wording=cfg.prompt_wording, **params)
                                         for s in chunk], [s["image"] for s in chunk])
        answers = policy.generate(prompts, greedy=True, max_new_tokens=cfg.max_new_tokens)
        for j, (s, text) in enumerate(zip(chunk, policy.encoder.tokenizer.batch_decode(answers, skip_special_tokens=True))):
            right[s0 + j] = [p == t and t >= 0 for p, t in zip(read_fields(text, task), s["fields"])]
            action_ok[s0 + j] = extract_action_value(text) == s["action"].lower()
    policy.train(was_training)
    out = {f"read/{f.replace(' ', '_')}": float(right[:, i].mean()) for i, f in enumerate(fields)}
    out.update({"read/all": float(right.all(1).mean()), "read/oracle_action": float(action_ok.mean()),
                "read/states": float(len(states))})
    return out
