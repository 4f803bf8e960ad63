"""Prompt templates: byte-identical reference wording, built from the env's current state."""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import gymnasium as gym
import pytest

import vlm_envs
from vlm_envs import TextActions
from vlm_envs.text.prompts import REFERENCE_TEMPLATES, build_prompt, chat_messages, conversation, template

# sha256 of "cot|action-only" for each reference family, fixed when they were copied from the spec.
REFERENCE_HASHES = {
    "numberline": "11417f29376400d2",
    "blackjack": "9a3fca76803b639b",
    "ezpoints": "1d397fe424c88fef",
    "points24": "9d74054f1e8f7d36",
    "alfworld": "28b23e784149463c",
}
SPEC = Path(__file__).resolve().parents[3] / "shared" / "spec" / "prompts_and_parsers.md"


@pytest.mark.parametrize("task", sorted(REFERENCE_HASHES))
def test_reference_templates_are_unchanged(task):
    cot, action = REFERENCE_TEMPLATES[task]
    assert hashlib.sha256(f"{cot}|{action}".encode()).hexdigest()[:16] == REFERENCE_HASHES[task]


@pytest.mark.skipif(not SPEC.exists(), reason="the shared spec is not beside this checkout")
def test_reference_templates_equal_the_spec_verbatim_blocks():
    verbatim = {ast.literal_eval(line) for line in SPEC.read_text().splitlines() if line.startswith("'")}
    assert {t for pair in REFERENCE_TEMPLATES.values() for t in pair} == verbatim


def test_reference_quirks_are_kept_and_clean_wording_fixes_them():
    p24 = template("points24")
    assert "thee four cards" in p24 and "\\{" in p24
    clean = template("points24", wording="clean")
    assert "thee" not in clean and "\\" not in clean
    assert template("alfworld").startswith("Your are") and template("alfworld", wording="clean").startswith("You are")


def test_formula_is_filled_in_twice_for_cot_once_for_action_only():
    assert build_prompt("ezpoints", "6*").count("6*") == 2
    assert build_prompt("ezpoints", "6*", cot=False).count("6*") == 1
    assert "{formula}" not in build_prompt("points24", "")


def test_unknown_task_or_wording_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown prompt task"):
        build_prompt("chess", "")
    with pytest.raises(ValueError, match="wording"):
        build_prompt("numberline", "", wording="fancy")


def test_env_prompt_follows_current_state():
    env = gym.make("gym_cards/Points24-v0")
    env.reset(seed=0)
    names = env.unwrapped.action_names
    first = env.unwrapped.numbers[0]
    env.step(names.index(str(first)))
    env.step(names.index("+"))
    assert f"current formula: {first}+." in env.unwrapped.prompt()
    assert env.unwrapped.prompt() == build_prompt("points24", env.unwrapped._text())


def test_vector_env_prompt_after_autoreset_shows_the_new_episode():
    """After an episode ends (docs/reference_differences.md, "Prompt after a reset"), the next prompt must not carry the old formula."""
    envs = gym.make_vec("gym_cards/EZPoints-v0", 2, vectorization_mode="sync")
    obs, _ = envs.reset(seed=0)
    obs, *_ = envs.step([0, 0])
    assert all(text != "" for text in obs["text"])
    obs, _, terminated, _, _ = envs.step([12, 12])  # "=" ends both episodes
    assert terminated.all()
    obs, *_ = envs.step([0, 0])  # next-step autoreset: the reset observation
    assert list(obs["text"]) == ["", ""]
    assert "current formula: ." in build_prompt("ezpoints", obs["text"][0])


def test_chat_messages_and_conversation():
    prompt = build_prompt("numberline", "")
    messages = chat_messages(prompt)
    assert messages[0]["role"] == "user" and messages[0]["content"][0] == {"type": "image"}
    assert messages[0]["content"][1]["text"] == prompt
    assert conversation(prompt).endswith(f"USER: <image>\n{prompt} ASSISTANT:")
    assert "curious user" in conversation(prompt, "vicuna_v1")
    env = gym.make("gym_cards/Blackjack-v0")
    env.reset(seed=0)
    assert env.unwrapped.prompt(chat=True) == chat_messages(vlm_envs.build_prompt("blackjack", ""))


# -- prompts and CoT answers follow the env's target ----------------------------------------------
def test_clean_prompt_states_the_envs_target():
    env = gym.make("gym_cards/EZPoints-v0", target_points=10).unwrapped
    env.reset(seed=0)
    for cot in (True, False):
        prompt = env.prompt(cot=cot, wording="clean")
        assert "evaluates to 10" in prompt and "12" not in prompt
    assert "equals 10" in env.prompt(cot=True, wording="clean")
    points24 = gym.make("gym_cards/Points24-v0", target_points=30).unwrapped
    points24.reset(seed=0)
    assert "evaluates to 30" in points24.prompt(wording="clean") and "24" not in points24.prompt(wording="clean")


def test_reference_wording_refuses_a_non_default_target():
    env = gym.make("gym_cards/EZPoints-v0", target_points=10).unwrapped
    env.reset(seed=0)
    with pytest.raises(ValueError, match="states the target 12 and cannot say 10.*wording='clean'"):
        env.prompt(wording="reference")
    default = gym.make("gym_cards/EZPoints-v0").unwrapped
    default.reset(seed=0)
    assert default.prompt(wording="reference") == build_prompt("ezpoints", "", wording="reference")


def test_agent_loop_prompts_use_the_envs_target():
    from vlm_envs.running.agent_loop import run_agent

    envs = gym.make_vec("gym_cards/EZPoints-v0", 2, wrappers=[TextActions], target_points=10)
    turns = run_agent(envs, lambda prompts, images: ['{"action": "="}'] * len(prompts), steps=1, seed=0, wording="clean")
    assert all("evaluates to 10" in t.prompt for t in turns)


def test_cot_answers_follow_the_envs_target():
    from baselines.vlm_ppo import cot

    env = gym.make("gym_cards/EZPoints-v0", target_points=10)
    _, info = env.reset(seed=0)
    assert "equals 10" in cot.answer("ezpoints", info, "=") and "12" not in cot.answer("ezpoints", info, "=")
    assert "equals 12" in cot.answer("ezpoints", {"Numbers": [6, 6], "Formula": [6, "+", 6]}, "=")  # no target: the default


def test_cot_blackjack_answer_takes_the_envs_own_count():
    """The player's total is the env's ``player_total`` and the up-card counts by the env's rules
    (an ace shows 11): the CoT keeps no card arithmetic of its own."""
    from baselines.vlm_ppo import cot

    answer = cot.answer("blackjack", {"player_total": 17, "dealer_upcard": (1, "A", "S")}, "stand")
    assert "I have 17 points and the dealer has 11 points" in answer
    env = gym.make("gym_cards/Blackjack-v0")
    for seed in range(20):
        _, info = env.reset(seed=seed)
        assert f"I have {info['player_total']} points" in cot.answer("blackjack", info, "hit")
