"""vlm_envs.running.agent_loop.run_agent: prompts from the env, text through the env's parser, plain records."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

import vlm_envs
from tests.utils import AVAILABLE_SPECS
from vlm_envs.running.agent_loop import Turn, run_agent


def oracle_generate(envs):
    """A generator that answers with each live sub-env's oracle action, read through ``call``."""

    def generate(prompts, images):
        names = envs.get_attr("action_names")
        oracle = envs.call("oracle_action")
        # The loop asks only for live envs (a finished env is skipped on its reset step), so map
        # each image back to a sub-env by its frame; equal frames mean equal NumberLine states.
        frames = envs.call("render")
        texts = []
        for image in images:
            i = next(k for k, frame in enumerate(frames) if np.array_equal(frame, image))
            action = oracle[i]
            texts.append(json.dumps({"action": names[i][action] if isinstance(action, (int, np.integer)) else action}))
        return texts

    return generate


@pytest.mark.parametrize("autoreset", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP], ids=["next_step", "same_step"])
def test_oracle_through_the_loop_solves_numberline(autoreset):
    envs = gym.make_vec("gym_cards/NumberLine-v0", 2, vectorization_mode="sync", wrappers=[vlm_envs.TextActions],
                        vector_kwargs={"autoreset_mode": autoreset}, render_mode="rgb_array")
    turns = run_agent(envs, oracle_generate(envs), episodes=12, seed=0)
    finished = [t for t in turns if t.done]
    assert len(finished) >= 12
    assert all(t.success and t.parse_ok for t in finished)
    assert all(t.parse_ok and t.parse_error == "" for t in turns)
    assert all(t.action in (0, 1) for t in turns)
    # every record's prompt is the env's own prompt for that state
    assert all(t.prompt == vlm_envs.build_prompt("numberline", "") for t in turns)
    # steps count up within an episode and episodes never share an id across envs
    for episode in {t.episode for t in turns}:
        mine = [t for t in turns if t.episode == episode]
        assert [t.step for t in mine] == list(range(len(mine)))
        assert len({t.env_index for t in mine}) == 1
    envs.close()


def test_records_are_plain_and_reproducible(tmp_path):
    def make():
        return gym.make_vec("gym_cards/Points24-v0", 2, vectorization_mode="sync", wrappers=[vlm_envs.TextActions])

    def babble(prompts, images):  # deterministic, partly unparseable
        return ['{"action": "%d"}' % (len(p) % 10 + 1) if k % 2 else "no idea" for k, p in enumerate(prompts)]

    a = run_agent(make(), babble, steps=15, seed=4, image_dir=tmp_path)
    b = run_agent(make(), babble, steps=15, seed=4)
    assert [(t.output, t.action, t.reward, t.done) for t in a] == [(t.output, t.action, t.reward, t.done) for t in b]
    assert any(not t.parse_ok for t in a) and any(t.parse_ok for t in a)
    record = a[0].to_dict()
    json.dumps(record)  # plain: images were saved to files
    assert record["image"].endswith(".png") and (tmp_path / record["image"].split("/")[-1]).exists()
    assert np.array_equal(np.asarray(__import__("PIL.Image").Image.open(record["image"])), b[0].image)
    assert "Formula" in record["prompt"] or "formula" in record["prompt"]


def test_chat_prompts_and_clear_errors():
    envs = gym.make_vec("gym_cards/Blackjack-v0", 2, vectorization_mode="sync", wrappers=[vlm_envs.TextActions])
    seen = []
    run_agent(envs, lambda p, im: seen.extend(p) or ['{"action": "stand"}'] * len(p), steps=2, chat=True)
    assert seen[0][0]["content"][0] == {"type": "image"}
    with pytest.raises(ValueError, match="returned 1 texts for 2"):
        run_agent(envs, lambda p, im: ["stand"], steps=1)
    with pytest.raises(ValueError, match="episodes=, steps="):
        run_agent(envs, lambda p, im: p)
    with pytest.raises(TypeError, match="TextActions"):
        run_agent(gym.make_vec("gym_cards/Blackjack-v0", 1, vectorization_mode="sync"), lambda p, im: p, steps=1)


@pytest.mark.parametrize("env_id", [s.id for s in AVAILABLE_SPECS])
def test_loop_runs_on_every_id(env_id):
    envs = gym.make_vec(env_id, 2, vectorization_mode="sync", wrappers=[vlm_envs.TextActions])
    turns = run_agent(envs, lambda p, im: ['{"action": "look"}'] * len(p), steps=3, seed=0)
    assert len(turns) >= 3 and all(isinstance(t, Turn) and t.image.ndim == 3 for t in turns)
    envs.close()
