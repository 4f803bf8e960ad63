import os
import tempfile

# Tests see the package as a fresh install does: not this machine's generated ALFWorld train set
# (``generate --preset official``) or cached translations, which would change what split="train" plays.
os.environ.setdefault("VLM_ENVS_CACHE", tempfile.mkdtemp(prefix="vlm_envs_test_cache_"))

# Headless pygame for render_mode="human" tests; set before pygame is ever imported.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
