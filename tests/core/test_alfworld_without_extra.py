"""Without the "alfworld" extra the ALFWorld ids still register, lightly, and making one names the extra.

These run where tests/alfworld/ (which needs the extra) is skipped.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_importing_the_package_and_registering_is_light():
    code = (
        "import sys, vlm_envs, vlm_envs.alfworld_wrap as a; a.register_envs(); import gymnasium as gym;"
        "assert 'alfworld/ALFWorld-v0' in gym.registry;"
        "heavy = [m for m in ('alfworld', 'textworld', 'fast_downward', 'tatsu') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def test_make_without_the_extra_names_the_extra():
    code = (
        "import sys; sys.modules['textworld'] = None; sys.modules['alfworld'] = None\n"
        "import gymnasium as gym, vlm_envs, vlm_envs.alfworld_wrap as a; a.register_envs()\n"
        "from gymnasium.error import DependencyNotInstalled\n"
        "try:\n    gym.make('alfworld/ALFWorld-v0')\nexcept DependencyNotInstalled as e:\n"
        "    assert 'pip install \"vlm-envs[alfworld]\"' in str(e), str(e); print('OK')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.stdout.strip() == "OK", out.stderr
