"""``hf:PATH_OR_ID``: an image-text-to-text checkpoint as the policy, through the trainer's policy code.

Loading, input encoding and sampling are the PPO trainer's own (``load_policy``, its
``Encoder`` and ``ActorCritic.generate``), so a model is evaluated exactly as it is trained and
sampled: same conversation format, same processor outputs, same ``softmax(z/T)``. This module
only picks the conversation format and decodes the answer. Needs the ``train`` extra.

The kind ``hf`` registers itself (:mod:`vlm_envs.evaluation.registry`) when this module is
imported, and ``setup.cfg`` declares it as an entry point, so ``make_policy("hf:...")`` and
``python -m vlm_envs evaluate --policy hf:...`` find it without vlm_envs importing the trainer.

Requests are decoded one at a time: batching would left-pad prompts together and share one
sampling stream, so an answer would depend on its batch neighbours (see the contract in
:mod:`vlm_envs.evaluation.policies`). With ``temperature > 0`` torch is seeded from each
request's own seed before it is sampled.
"""

from __future__ import annotations

from typing import Any, Sequence

from vlm_envs.evaluation.policies import Reply, Request
from vlm_envs.evaluation.registry import register_policy
from vlm_envs.optional import require
from vlm_envs.text.prompts import CONV_TEMPLATES


class HFPolicy:
    """A Hugging Face VLM as the policy (see the module docstring).

    Args:
        path: a local folder or a Hub id (offline machines need a local folder).
        temperature: 0 (default) decodes greedily; otherwise samples from ``softmax(logits / T)``.
        max_new_tokens: the answer length limit.
        conv_template: ``"auto"`` (``llava_v1`` for LLaVA models, else the processor's chat
            template), or one of ``vlm_envs.text.prompts.CONV_TEMPLATES``.
        image_mode: ``native`` or ``reference`` (the trainer's ``--image-mode``).
        dtype, device: where the model runs.
    """

    needs_oracle = False

    def __init__(self, path: str, *, temperature: float = 0.0, max_new_tokens: int = 256, conv_template: str = "auto",
                 image_mode: str = "native", dtype: str = "float32", device: str = "cpu"):
        self.torch = require("torch", "train", "the hf: policy")
        require("transformers", "train", "the hf: policy")
        from baselines.vlm_ppo.encoding import Encoder
        from baselines.vlm_ppo.evaluation import TrainerPolicy
        from baselines.vlm_ppo.policy import ActorCritic, load_policy

        if conv_template not in ("auto", *CONV_TEMPLATES):
            raise ValueError(f"conv_template must be auto or one of {CONV_TEMPLATES}, got {conv_template!r}")
        self.path = path
        self.dtype, self.device = dtype, device
        self.temperature = float(temperature)
        self.max_new_tokens = int(max_new_tokens)
        processor, vlm = load_policy(path, dtype=dtype)
        if conv_template == "auto":
            conv_template = "llava_v1" if "llava" in vlm.config.model_type else "chat_template"
        self.conv_template = conv_template
        encoder = Encoder(processor, vlm.config, conv_template, image_mode)
        # temperature 0 means greedy; the scorer's temperature is then irrelevant
        self.policy = ActorCritic(vlm, encoder, temperature=self.temperature or 1.0, thought_coef=1.0)
        self.policy.to(device).eval()
        self.answerer = TrainerPolicy(self.policy, greedy=self.temperature == 0, max_new_tokens=self.max_new_tokens)

    def describe(self) -> dict[str, Any]:
        return {"name": "hf", "model": self.path, "temperature": self.temperature, "max_new_tokens": self.max_new_tokens,
                "conv_template": self.conv_template, "image_mode": self.policy.encoder.image_mode,
                "dtype": self.dtype, "device": self.device}

    def act(self, requests: Sequence[Request]) -> list[Reply]:
        return [self._answer(r) for r in requests]

    def _answer(self, request: Request) -> Reply:
        if not self.answerer.greedy:
            self.torch.manual_seed(int(request.rng().integers(2**63)))
        [text] = self.answerer.act([request])
        return Reply(text)

    def close(self) -> None:
        self.policy = self.answerer = None


register_policy("hf", HFPolicy)
