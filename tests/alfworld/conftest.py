"""The ALFWorld env's tests need the "alfworld" extra: without it this folder is skipped
(tests/core/test_alfworld_without_extra.py checks what works without it)."""

import os
import tempfile

from tests.utils import skip_unless_extra

skip_unless_extra("alfworld", "textworld", "alfworld")

# alfworld's data folder, set before any test module imports alfworld: a temporary one, never the user's
os.environ.setdefault("ALFWORLD_DATA", os.path.join(tempfile.gettempdir(), "vlm_envs_alfworld_data"))
