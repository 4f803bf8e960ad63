import os
import tempfile

# Tests see the package as a fresh install does: not this machine's generated ALFWorld train set
# (``generate --preset official``) or cached translations, which would change what split="train" plays.
os.environ.setdefault("VLM_ENVS_CACHE", tempfile.mkdtemp(prefix="vlm_envs_test_cache_"))

# Headless pygame for render_mode="human" tests; set before pygame is ever imported.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def one_torch_thread():
    """Trainer tests run torch on one thread: faster and steadier than two on the shared 2-core machine."""
    torch = pytest.importorskip("torch")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def family_path(tmp_path_factory):
    """``family_path(family)``: a tiny random checkpoint of ``family`` (tiny_families.py), built once per session."""
    pytest.importorskip("transformers")
    from baselines.vlm_ppo.tiny_families import build_tiny

    cache = {}

    def get(family: str):
        if family not in cache:
            cache[family] = build_tiny(family, tmp_path_factory.mktemp(family) / "model")
        return cache[family]

    return get
