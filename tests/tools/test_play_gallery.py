"""``python -m vlm_envs gallery``: the committed docs/gallery frames are what the command generates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.utils import AVAILABLE_SPECS
from vlm_envs.__main__ import main
from vlm_envs.tools.gallery import file_name
from vlm_envs.core.registration import registered_ids

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "gallery"


def test_gallery_lists_every_registered_id():
    assert set(registered_ids()) >= {s.id for s in AVAILABLE_SPECS}


@pytest.mark.parametrize("env_id", [s.id for s in AVAILABLE_SPECS])
def test_committed_frame_is_regenerated_identically(env_id, tmp_path):
    assert main(["gallery", "--out", str(tmp_path), "--env", env_id]) == 0
    fresh = np.asarray(Image.open(tmp_path / file_name(env_id)))
    committed = COMMITTED / file_name(env_id)
    assert committed.exists(), f"run `python -m vlm_envs gallery --out docs/gallery` to add {committed.name}"
    assert np.array_equal(fresh, np.asarray(Image.open(committed))), f"docs/gallery/{committed.name} is stale"
    assert f"]({file_name(env_id)})" in (tmp_path / "index.md").read_text()
