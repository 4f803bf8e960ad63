"""Reading the state from the image: an auxiliary objective for the vision path, and the reading gate.

A policy that cannot read the digits of NumberLine plays a state-independent policy (at most ~50%
greedy success), so PPO can only reach high success if the image features carry the numbers to the
language model. Two tools (spec models_offline.md, "Lessons from a CPU learning probe"):

* **Auxiliary reading objective** (:class:`ReadingHead`, :func:`reading_loss`): a linear probe on the
  *projected image tokens* (what the language model sees) predicts each number field of the CoT
  answer (``"target number"``, ``"current number"``) as a digit class. Used alone in a short vision alignment stage (tower + projector, like LLaVA's stage 1) and added
  to the SFT loss.
* **Reading gate** (:func:`reading_accuracy`): greedy answers on every distinct held-out state
  (oracle episodes from the evaluation seeds), with the CoT's number fields compared to the truth.
"""

from __future__ import annotations

import hashlib
import re
from typing import Sequence

import numpy as np
import torch
from torch import nn

FIELDS = ("target number", "current number")
"""CoT fields that state what the image shows (the NumberLine answer, :func:`cot.numberline`)."""
NUM_CLASSES = 10
"""Digit classes of the reading head (values 0..9)."""
_FIELD_RE = {f: re.compile(r'"' + f + r'":\s*"(\d+)"') for f in FIELDS}


def read_fields(text: str) -> list[int]:
    """The integer value of each of :data:`FIELDS` in ``text``; -1 where missing or out of range."""
    out = []
    for f in FIELDS:
        m = _FIELD_RE[f].search(text)
        out.append(int(m.group(1)) if m and int(m.group(1)) < NUM_CLASSES else -1)
    return out


def image_tokens(vlm: nn.Module, images: dict) -> torch.Tensor:
    """The projected image tokens (B, tokens, hidden): exactly what the LM sees at the image positions.

    ``images`` are an encoded batch's image inputs; the model's own ``get_image_features`` reads them,
    so this works for any family whose frames all give the same number of tokens.
    """
    model = vlm.get_base_model() if hasattr(vlm, "get_base_model") else vlm
    device = next(model.parameters()).device
    out = model.model.get_image_features(**{k: v.to(device) for k, v in images.items()}, return_dict=True)
    return torch.stack(list(out.pooler_output)).float()


class ReadingHead(nn.Module):
    """A linear probe ``Linear(tokens * hidden, len(FIELDS) * NUM_CLASSES)`` on the flattened image tokens.

    (A probe on mean-pooled tokens stayed at chance in 100 steps on NumberLine: the digits occupy
    few patches and pooling needs position-aware features first; the flattened probe only asks
    each patch to encode what it shows.)
    """

    def __init__(self, tokens: int, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(tokens * hidden_size, len(FIELDS) * NUM_CLASSES)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(tokens.flatten(1)).view(-1, len(FIELDS), NUM_CLASSES)


def reading_loss(head: ReadingHead, vlm: nn.Module, images: dict, labels: torch.Tensor
                 ) -> tuple[torch.Tensor, float]:
    """Cross-entropy of the reading head against ``labels`` (B, len(FIELDS); -1 = unknown) and its accuracy."""
    logits = head(image_tokens(vlm, images))
    labels = labels.to(logits.device)
    loss = nn.functional.cross_entropy(logits.reshape(-1, NUM_CLASSES), labels.reshape(-1), ignore_index=-1)
    known = labels >= 0
    acc = float((logits.argmax(-1) == labels)[known].float().mean()) if known.any() else float("nan")
    return loss, acc


def heldout_states(cfg, episodes: int = 200) -> list[dict]:
    """Distinct states of oracle episodes from the evaluation seeds: image, prompt text, true fields, oracle action."""
    from baselines.vlm_ppo import cot
    from baselines.vlm_ppo.envs import make_env

    env = make_env(cfg)
    u = env.unwrapped
    task = u.prompt_task
    states: dict[str, dict] = {}
    for k in range(episodes):
        obs, info = env.reset(seed=cfg.eval_seed + k)
        done = False
        while not done:
            oracle = u.oracle_action()
            name = oracle if isinstance(oracle, str) else u.action_names[oracle]
            key = hashlib.sha1(obs["image"].tobytes() + obs["text"].encode()).hexdigest()
            if key not in states:
                truth = cot.answer(task, info, name, cfg.cot)
                states[key] = {"image": np.array(obs["image"]), "text": obs["text"], "fields": read_fields(truth),
                               "action": name}
            obs, _, term, trunc, info = env.step(oracle)
            done = term or trunc
    env.close()
    return list(states.values())


@torch.no_grad()
def reading_accuracy(cfg, policy, states: Sequence[dict] | None = None) -> dict[str, float]:
    """The reading gate: greedy answers on every distinct held-out state.

    Returns the fraction of states whose CoT reads each field right (``read/target_number``,
    ``read/current_number``), both right (``read/all``), and whose action is the oracle's
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
    right = np.zeros((len(states), len(FIELDS)), bool)
    action_ok = np.zeros(len(states), bool)
    for s0 in range(0, len(states), 32):
        chunk = states[s0:s0 + 32]
        prompts = policy.encoder.encode([build_prompt(task, s["text"], cot=cfg.cot, wording=cfg.prompt_wording, **params)
                                         for s in chunk], [s["image"] for s in chunk])
        answers = policy.generate(prompts, greedy=True, max_new_tokens=cfg.max_new_tokens)
        for j, (s, text) in enumerate(zip(chunk, policy.encoder.tokenizer.batch_decode(answers, skip_special_tokens=True))):
            right[s0 + j] = [p == t and t >= 0 for p, t in zip(read_fields(text), s["fields"])]
            action_ok[s0 + j] = extract_action_value(text) == s["action"].lower()
    policy.train(was_training)
    out = {f"read/{f.replace(' ', '_')}": float(right[:, i].mean()) for i, f in enumerate(FIELDS)}
    out.update({"read/all": float(right.all(1).mean()), "read/oracle_action": float(action_ok.mean()),
                "read/states": float(len(states))})
    return out
