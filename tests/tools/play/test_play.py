"""``python -m vlm_envs play``: headless pygame (SDL_VIDEODRIVER=dummy, tests/conftest.py), scripted typing."""

from __future__ import annotations

import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from PIL import Image

from tests.utils import AVAILABLE_SPECS

from vlm_envs.tools.play import PlayApp, as_model_text, play


def _oracle_name(env_id: str, seed: int) -> str:
    env = gym.make(env_id)
    env.reset(seed=seed)
    action = env.unwrapped.oracle_action()
    return env.unwrapped.action_names[action] if isinstance(action, (int, np.integer)) else action


def test_bare_words_are_wrapped_and_model_answers_are_not():
    assert as_model_text("hit") == '{"action": "hit"}'
    assert as_model_text('{"thoughts": "t", "action": "hit"}') == '{"thoughts": "t", "action": "hit"}'
    assert as_model_text("hit", raw=True) == "hit"


@pytest.mark.parametrize("env_id", [s.id for s in AVAILABLE_SPECS])
def test_typed_lines_go_through_the_parser(env_id, tmp_path):
    oracle = _oracle_name(env_id, seed=3)
    shot = tmp_path / "window.png"
    state = play(env_id, seed=3, script=[oracle, "@@@ not an action @@@"], exit_after_script=True,
                 on_parse_failure="noop", screenshot=str(shot))
    first = state.history[0]
    assert first["typed"] == oracle and first["parse_ok"] and first["action"] == oracle
    if not first["terminated"] and not first["truncated"]:
        second = state.history[1]
        assert not second["parse_ok"] and second["parse_error"]
        if env_id.startswith("gym_cards/"):  # noop: the game did not advance (ALFWorld has its own rule)
            assert second["reward"] == 0.0 and second["action"] == -1
    window = np.asarray(Image.open(shot))
    assert window.shape[:2] == (600, 890) and window.std() > 10  # something was drawn


def test_enter_after_the_end_deals_the_next_episode():
    app = PlayApp("gym_cards/Blackjack-v0", seed=0, script=["stand", "hit", "", "stand"], exit_after_script=True)
    try:
        state = app.run(max_frames=100)
    finally:
        app.close()
    assert [h["episode"] for h in state.history] == [0, 1]  # "hit" after the end was refused, "" dealt episode 1
    assert all(h["terminated"] for h in state.history)
    assert "press Enter on an empty line" not in state.lines[-1][0]  # the new episode's screen


def test_keyboard_events_edit_the_line():
    import pygame

    app = PlayApp("gym_cards/NumberLine-v0", seed=1)
    try:
        for event in [pygame.event.Event(pygame.TEXTINPUT, text="+x"),
                      pygame.event.Event(pygame.KEYDOWN, key=pygame.K_BACKSPACE, mod=0),
                      pygame.event.Event(pygame.KEYDOWN, key=pygame.K_RETURN, mod=0)]:
            assert app.handle(event)
        assert app.state.history[0]["sent"] == '{"action": "+"}'
        assert not app.handle(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_ESCAPE, mod=0))
    finally:
        app.close()


def test_cli_prints_each_step():
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy"}
    out = subprocess.run(
        [sys.executable, "-m", "vlm_envs", "play", "--env", "gym_cards/NumberLine-v0", "--type", "+", "--type", "-",
         "--exit-after-script"], capture_output=True, text=True, check=True, env=env, timeout=120,
    ).stdout
    assert "sent '{\"action\": \"+\"}' -> parse_ok=True action='+'" in out
