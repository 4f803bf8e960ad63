"""``hf:PATH_OR_ID``: an image-text-to-text checkpoint as the policy, through the trainer's policy code.

Loading, prompt encoding and decoding are the PPO trainer's own (:mod:`baselines.vlm_ppo.policy`:
``load_policy``, ``encode_prompts``, ``generate``, ``suppressed_token_ids``), so a model is
evaluated exactly as it was trained and sampled. This module only wraps the env's prompt in the
conversation format and decodes the answer. Needs the ``train`` extra.

Requests are decoded one at a time: batching would left-pad prompts together and share one
sampling stream, so an answer would depend on its batch neighbours (see the contract in
:mod:`vlm_envs.evaluation.policies`). With ``temperature > 0`` torch is seeded from each
request's own seed before it is sampled.
"""

from __future__ import annotations

from typing import Any, Sequence

from vlm_envs.evaluation.policies import Reply, Request
from vlm_envs.optional import require
from vlm_envs.text.prompts import CONVERSATION_TEMPLATES, chat_messages, conversation


class HFPolicy:
    """A Hugging Face VLM as the policy (see the module docstring).

    Args:
        path: a local folder or a Hub id (offline machines need a local folder).
        temperature: 0 (default) decodes greedily; otherwise samples from ``softmax(logits / T)``.
        max_new_tokens: the answer length limit.
        conv_template: ``"auto"`` (the processor's chat template when it has one, else
            ``llava_v1``), ``"chat_template"``, or a name in ``vlm_envs.text.prompts.CONVERSATION_TEMPLATES``.
        dtype, device: where the model runs.
    """

    needs_oracle = False

    def __init__(self, path: str, *, temperature: float = 0.0, max_new_tokens: int = 256, conv_template: str = "auto",
                 dtype: str = "float32", device: str = "cpu"):
        self.torch = require("torch", "train", "the hf: policy")
        require("transformers", "train", "the hf: policy")
        from baselines.vlm_ppo import policy as trainer_policy

        if conv_template not in ("auto", "chat_template", *CONVERSATION_TEMPLATES):
            raise ValueError(f"conv_template must be auto, chat_template or one of {sorted(CONVERSATION_TEMPLATES)}")
        self.trainer_policy = trainer_policy
        self.path = path
        self.temperature = float(temperature)
        self.max_new_tokens = int(max_new_tokens)
        self.device = device
        self.processor, self.vlm = trainer_policy.load_policy(path, dtype=dtype)
        self.vlm.to(device).eval()
        if conv_template == "auto":
            conv_template = "chat_template" if getattr(self.processor, "chat_template", None) else "llava_v1"
        self.conv_template = conv_template
        self.suppress_ids = trainer_policy.suppressed_token_ids(self.processor.tokenizer)

    def describe(self) -> dict[str, Any]:
        return {"name": "hf", "model": self.path, "temperature": self.temperature, "max_new_tokens": self.max_new_tokens,
                "conv_template": self.conv_template}

    def model_input(self, prompt: str) -> str:
        """The env's prompt in the model's conversation format (as the trainer wraps it)."""
        if self.conv_template == "chat_template":
            return self.processor.apply_chat_template(chat_messages(prompt), add_generation_prompt=True, tokenize=False)
        return conversation(prompt, self.conv_template)

    def act(self, requests: Sequence[Request]) -> list[Reply]:
        return [self._answer(r) for r in requests]

    def _answer(self, request: Request) -> Reply:
        torch, policy = self.torch, self.trainer_policy
        prompt_ids = policy.encode_prompts(self.processor, [self.model_input(request.prompt)], [request.image])
        greedy = self.temperature == 0
        if not greedy:
            torch.manual_seed(int(request.rng().integers(2**63)))
        with torch.no_grad():
            [ids] = policy.generate(self.vlm, self.processor, prompt_ids, [request.image], greedy=greedy,
                                    temperature=self.temperature if not greedy else 1.0,
                                    max_new_tokens=self.max_new_tokens, suppress_ids=self.suppress_ids, device=self.device)
        return Reply(self.processor.tokenizer.decode(ids, skip_special_tokens=True))

    def close(self) -> None:
        self.vlm = None
