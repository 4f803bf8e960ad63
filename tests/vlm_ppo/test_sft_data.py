"""SFT data from every oracle (cards and ALFWorld), per-state corruption, the weak-start estimate,
the reading fields of every card env, and the embedded model's ALFWorld capacity. CPU only."""

from __future__ import annotations

import collections
import json

import gymnasium as gym
import numpy as np
import pytest
import torch

import vlm_envs  # noqa: F401  (registers the ids)
from baselines.vlm_ppo import cot
from baselines.vlm_ppo.config import Config
from baselines.vlm_ppo.reading import READING_TASKS, read_fields
from baselines.vlm_ppo.sft import ensure_sft_data, generate_sft_data, imitation_start
from vlm_envs.cards.blackjack import Card, hand_total
from vlm_envs.core.registration import CARD_ENVS

ALFWORLD = "alfworld/ALFWorld-v0"


@pytest.fixture(scope="module", autouse=True)
def _threads(one_torch_thread):
    """One torch thread for every test here."""


def _config(tmp_path, **overrides) -> Config:
    return Config(**{"output_dir": str(tmp_path), "eval_episodes": 4, **overrides})


def _records(out) -> list[dict]:
    return json.loads((out / "data.json").read_text())


def _admissible(prompt: str) -> list[str]:
    """The commands the ALFWorld prompt lists (``['go to x 1'\\n 'look']``)."""
    listed = prompt.split("admissible actions of the current situation are: [", 1)[1].split("]. ", 1)[0]
    return [c.strip().strip("'") for c in listed.split("\n")]


def _action(answer: str) -> str:
    return answer.rsplit('"action": "', 1)[1].rstrip('"}')


# --- ALFWorld ----------------------------------------------------------------------------------
def test_alfworld_sft_data_is_the_experts_steps_in_the_llava_format(tmp_path):
    pytest.importorskip("alfworld")
    cfg = _config(tmp_path, env_id=ALFWORLD, sft_samples=10, sft_explore=0.0, env_kwargs='{"max_steps": 10}',
                  eval_episodes=1)
    records = _records(generate_sft_data(cfg))
    assert len(records) == 10
    env = gym.make(ALFWORLD, max_steps=10)
    _, info = env.reset(seed=cfg.seed * 1_000_003)  # the first episode of the data
    for rec in records[:3]:
        human, gpt = rec["conversations"][0]["value"], rec["conversations"][1]["value"]
        assert human.startswith("<image>\n") and (tmp_path / "sft_data" / rec["image"]).exists()
        expert = env.unwrapped.oracle_action()
        assert _action(gpt) == expert and expert in _admissible(human)
        assert f"Of the {len(info['admissible_commands'])} admissible actions, {expert}" in gpt
        assert info["task"].rstrip(". ") in gpt
        *_, info = env.step(gpt)  # the answer itself is a valid env action
        assert info["matched_command"] == expert
    meta = json.loads((tmp_path / "sft_data" / "meta.json").read_text())
    assert meta["wrong_labels"] == 0 and meta["imitation_start"]["success"] == meta["imitation_start"]["oracle"]


def test_alfworld_wrong_labels_are_other_admissible_commands(tmp_path):
    pytest.importorskip("alfworld")
    cfg = _config(tmp_path, env_id=ALFWORLD, sft_samples=8, sft_wrong_state_frac=1.0, sft_wrong_action_prob=1.0,
                  env_kwargs='{"max_steps": 6}', eval_episodes=1)
    out = generate_sft_data(cfg)
    assert json.loads((out / "meta.json").read_text())["wrong_labels"] == 8
    env = gym.make(ALFWORLD, max_steps=6)
    env.reset(seed=cfg.seed * 1_000_003)
    record = _records(out)[0]
    label = _action(record["conversations"][1]["value"])
    assert label in _admissible(record["conversations"][0]["value"]) and label != env.unwrapped.oracle_action()


def test_held_out_evaluation_plays_the_eval_env_kwargs_split(tmp_path, monkeypatch):
    """ALFWorld's held-out seeds on the train split would replay the training games: with
    ``eval_env_kwargs`` the evaluation, the weak-start estimate and the reading gate's states play
    the evaluation games, while SFT data and training stay on the train split."""
    pytest.importorskip("alfworld")
    import types

    from baselines.vlm_ppo import envs, evaluation, reading, sft
    from baselines.vlm_ppo.envs import held_out, make_env, make_vec_env

    cfg = _config(tmp_path, env_id=ALFWORLD, env_kwargs='{"max_steps": 8}',
                  eval_env_kwargs='{"split": "eval_out_of_distribution"}')
    assert held_out(_config(tmp_path)) == _config(tmp_path)
    assert json.loads(held_out(cfg).env_kwargs) == {"max_steps": 8, "split": "eval_out_of_distribution"}
    assert make_env(cfg).unwrapped.split == "train"
    vec = make_vec_env(held_out(cfg), 1, vectorization="sync")
    assert vec.get_attr("split") == ("eval_out_of_distribution",) and vec.get_attr("max_steps") == (8,)
    vec.close()

    class Made(Exception):
        """Raised by the spies below with the env kwargs the code under test asked for."""

    def spy(c, *args, **kwargs):
        raise Made(json.loads(c.env_kwargs))

    def play_spy(manifest, *args, **kwargs):
        raise Made(manifest.episodes[0].kwargs)

    monkeypatch.setattr(evaluation, "play", play_spy)
    monkeypatch.setattr(sft, "make_env", spy)
    monkeypatch.setattr(envs, "make_env", spy)
    on_cpu = types.SimpleNamespace(training=False, eval=lambda: None, device=types.SimpleNamespace(type="cpu"))
    calls = (lambda: evaluation.evaluate(cfg, on_cpu, greedy=True),
             lambda: sft.imitation_start(cfg, episodes=1), lambda: reading.heldout_states(cfg, episodes=1))
    for call in calls:
        with pytest.raises(Made) as made:
            call()
        assert made.value.args[0] == {"max_steps": 8, "split": "eval_out_of_distribution"}


# --- cards: corruption and the weak-start estimate ------------------------------------------------
def test_sft_data_made_with_other_settings_is_refused_not_reused(tmp_path):
    numberline = {"env_id": "gym_cards/NumberLine-v0", "sft_samples": 4}
    out = ensure_sft_data(_config(tmp_path, **numberline))
    written = (out / "data.json").read_bytes()
    assert ensure_sft_data(_config(tmp_path, **numberline)) == out  # same settings: reused
    with pytest.raises(ValueError, match=r"sft_samples=4 \(now 6\)"):
        ensure_sft_data(_config(tmp_path, **{**numberline, "sft_samples": 6}))
    with pytest.raises(ValueError, match="sft_wrong_state_frac"):
        ensure_sft_data(_config(tmp_path, **numberline, sft_wrong_state_frac=0.5))
    assert (out / "data.json").read_bytes() == written
    # Passed explicitly, the folder is used as given.
    assert ensure_sft_data(_config(tmp_path / "other", **{**numberline, "sft_samples": 6}, sft_data=str(out))) == out


def test_every_card_env_writes_sft_data_with_readable_fields(tmp_path):
    for env_id in CARD_ENVS:
        out = generate_sft_data(_config(tmp_path / env_id.split("/")[1], env_id=env_id, sft_samples=6))
        records = _records(out)
        assert len(records) == 6
        task = gym.make(env_id).unwrapped.prompt_task
        fields = [read_fields(r["conversations"][1]["value"], task) for r in records]
        assert all(len(f) == len(READING_TASKS[task].fields) and min(f) >= 0 for f in fields), (env_id, fields)


def test_a_corrupted_state_always_gets_the_same_wrong_action(tmp_path):
    """EZPoints has 13 actions: random wrong labels would leave the oracle's the most frequent label."""
    cfg = _config(tmp_path, env_id="gym_cards/EZPoints-v0", sft_samples=300, sft_wrong_state_frac=1.0,
                  sft_wrong_action_prob=0.75, sft_explore=0.0)
    by_state = collections.defaultdict(collections.Counter)
    for rec in _records(generate_sft_data(cfg)):
        human, gpt = rec["conversations"][0]["value"], rec["conversations"][1]["value"]
        by_state[gpt.split('"thoughts"')[0] + human].update([_action(gpt)])
    repeated = [c for c in by_state.values() if sum(c.values()) >= 4]
    assert len(repeated) >= 10
    assert all(len(c) <= 2 for c in repeated)  # the oracle's action and one fixed wrong one
    assert sum(len(c) == 2 for c in repeated) >= len(repeated) // 2


def test_no_cot_data_corrupts_the_same_states_as_cot_data(tmp_path):
    """The state key is the CoT's description of the state, not the action-only answer (which
    would corrupt all '+' states or none)."""
    wrong = {}
    for flag in (True, False):
        cfg = _config(tmp_path / str(flag), sft_samples=200, cot=flag, sft_wrong_state_frac=0.5, sft_wrong_action_prob=1.0)
        records = _records(generate_sft_data(cfg))
        wrong[flag] = [_action(r["conversations"][1]["value"]) for r in records]
    assert wrong[True] == wrong[False]
    assert 0.2 < np.mean([a == "+" for a in wrong[False]]) < 0.8


def test_imitation_start_spans_oracle_to_always_wrong(tmp_path):
    clean = imitation_start(_config(tmp_path, eval_episodes=30))
    assert clean["success"] == clean["oracle"] == 1.0
    assert imitation_start(_config(tmp_path, eval_episodes=30, sft_wrong_state_frac=1.0))["success"] == 0.0
    half = imitation_start(_config(tmp_path, eval_episodes=60, sft_wrong_state_frac=0.5, sft_wrong_action_prob=0.75))
    assert 0.0 < half["success"] < 0.6
    # A minority of wrong labels keeps the oracle's action the majority: no weak start.
    assert imitation_start(_config(tmp_path, eval_episodes=30, sft_wrong_state_frac=1.0,
                                   sft_wrong_action_prob=0.4))["success"] == 1.0


# --- reading fields -------------------------------------------------------------------------------
def test_reading_fields_are_the_true_card_numbers():
    env = gym.make("gym_cards/Blackjack-v0")
    for seed in range(20):
        _, info = env.reset(seed=seed)
        answer = cot.answer("blackjack", info, "stand")
        assert read_fields(answer, "blackjack") == [info["player_total"], hand_total([Card(*info["dealer_upcard"])])]
    for env_id, task in (("gym_cards/EZPoints-v0", "ezpoints"), ("gym_cards/Points24-v0", "points24")):
        env = gym.make(env_id)
        for seed in range(10):
            _, info = env.reset(seed=seed)
            assert read_fields(cot.answer(task, info, "="), task) == [int(n) for n in info["Numbers"]]
    assert read_fields('{"thoughts": "I have 30 points and the dealer has 7 points."}', "blackjack") == [-1, 7]
    assert read_fields("anything", "alfworld") == []


def test_reading_head_learns_blackjack_totals(tmp_path):
    """The alignment stage on Blackjack frames: tower + projector + head fit the player total and
    dealer card of a few hands."""
    import io
    import random

    from baselines.vlm_ppo.encoding import Encoder
    from baselines.vlm_ppo.policy import ActorCritic, load_policy
    from baselines.vlm_ppo.reading import (
        ReadingHead,
        heldout_states,
        image_tokens,
        reading_loss,
    )
    from baselines.vlm_ppo.sft import _reading_batch, align_vision
    from baselines.vlm_ppo.tiny import build_tiny_llava

    torch.manual_seed(0)
    cfg = _config(tmp_path, env_id="gym_cards/Blackjack-v0", align_steps=25, align_lr=1e-3, sft_batch_size=4)
    states = heldout_states(cfg, episodes=8)
    assert all(s["fields"][0] >= 4 and 2 <= s["fields"][1] <= 11 for s in states)
    processor, vlm = load_policy(str(build_tiny_llava(tmp_path / "tiny")), train_vision=True)
    policy = ActorCritic(vlm, Encoder(processor, vlm.config), temperature=1.0, thought_coef=1.0)
    samples = [{"prompt": policy.encoder.encode([""], [s["image"]])[0], "fields": s["fields"]} for s in states[:4]]
    images, labels = _reading_batch(samples)
    spec = READING_TASKS["blackjack"]
    head = ReadingHead(image_tokens(policy, images).shape[1], vlm.config.text_config.hidden_size, len(spec.fields), spec.classes)
    first, _ = reading_loss(head, policy, images, labels)
    log = io.StringIO()
    assert align_vision(cfg, policy, head, samples, random.Random(0), log) == 1.0
    assert log.getvalue().count("align") == 25
    assert reading_loss(head, policy, images, labels)[0].item() < 0.3 * first.item()


def test_caption_alignment_trains_only_the_vision_path(tmp_path):
    """The caption stage on NumberLine frames: one sample per distinct frame, answered by its two
    numbers; the caption loss falls while every language-model weight stays as it was (the embedded
    LM is random, so only the image tokens can lower it, and by less than a pretrained LM's would),
    and the LM trains again afterwards."""
    import io
    import random

    from baselines.vlm_ppo.encoding import Encoder
    from baselines.vlm_ppo.policy import ActorCritic, load_policy
    from baselines.vlm_ppo.reading import caption, heldout_states
    from baselines.vlm_ppo.sft import align_captions, caption_samples, sft_loss, vision_path_parameters
    from baselines.vlm_ppo.tiny import build_tiny_llava

    assert caption("numberline", [4, 0]) == "target number: 4, current number: 0"
    torch.manual_seed(0)
    cfg = _config(tmp_path, align_caption_steps=30, align_lr=3e-3, align_caption_batch_size=4)
    states = heldout_states(cfg, episodes=4)
    processor, vlm = load_policy(str(build_tiny_llava(tmp_path / "tiny")), train_vision=True)
    policy = ActorCritic(vlm, Encoder(processor, vlm.config), temperature=1.0, thought_coef=1.0)
    unknown = {"image": states[0]["image"], "fields": [-1, 3]}  # first, so a frame is kept only once all is known
    samples = [unknown] + [{"image": s["image"], "fields": s["fields"]} for s in states] * 2
    captions = caption_samples(policy.encoder, samples, "numberline")
    assert len(captions) == len(states)
    answer = policy.encoder.tokenizer.decode(captions[0]["answer_ids"], skip_special_tokens=True)
    assert answer.strip() == caption("numberline", states[0]["fields"])
    vision = {id(p) for p in vision_path_parameters(vlm)}
    lm_before = {n: p.detach().clone() for n, p in vlm.named_parameters() if id(p) not in vision}
    vision_before = [p.detach().clone() for p in vision_path_parameters(vlm)]
    with torch.no_grad():
        first = sft_loss(policy, captions).item()
    log = io.StringIO()
    align_captions(cfg, policy, captions, random.Random(0), log)
    assert log.getvalue().count("caption") == 30
    with torch.no_grad():
        assert sft_loss(policy, captions).item() < first - 0.5  # nats per answer token (7.27 -> 6.38)
    assert all(torch.equal(p, lm_before[n]) and p.grad is None for n, p in vlm.named_parameters() if id(p) not in vision)
    assert any(not torch.equal(p, q) for p, q in zip(vision_path_parameters(vlm), vision_before))
    assert all(p.requires_grad for n, p in vlm.named_parameters() if n in lm_before)


# --- the embedded model's ALFWorld capacity ------------------------------------------------------
def test_alfworld_tokenizer_shortens_alfworld_and_leaves_the_default_alone():
    pytest.importorskip("alfworld")
    from baselines.vlm_ppo.tiny import alfworld_corpus, build_tokenizer, training_corpus
    from vlm_envs.text import build_prompt, conversation

    default = build_tokenizer()
    alf_text = alfworld_corpus(random_steps=2)
    alfworld = build_tokenizer(corpus=training_corpus() + alf_text)
    env = gym.make(ALFWORLD, split="eval_out_of_distribution")  # games the corpus never played
    obs, info = env.reset(seed=0, options={"game_index": 0})
    prompt = conversation(build_prompt("alfworld", obs["text"]))
    answer = cot.answer("alfworld", info, env.unwrapped.oracle_action())
    assert len(alfworld(prompt)["input_ids"]) < 0.5 * len(default(prompt)["input_ids"])
    assert len(alfworld(answer)["input_ids"]) < 0.5 * len(default(answer)["input_ids"])
    assert alfworld.decode(alfworld(prompt, add_special_tokens=False)["input_ids"]) == prompt  # lossless
    # Opt-in: the default tokenizer is the one trained on the package's own text alone.
    assert build_tokenizer().get_vocab() == default.get_vocab()


def test_sft_refuses_samples_longer_than_the_models_context():
    """The default embedded model has 1,024 positions; ALFWorld prompts with its tokenizer need more."""
    from types import SimpleNamespace

    from baselines.vlm_ppo.sft import check_context

    samples = [{"prompt": [0] * 900, "answer_ids": [0] * 130}]
    with pytest.raises(ValueError, match="1030 tokens.*1024 positions.*--alfworld True"):
        check_context(samples, SimpleNamespace(text_config=SimpleNamespace(max_position_embeddings=1024)))
    check_context(samples, SimpleNamespace(text_config=SimpleNamespace(max_position_embeddings=2048)))
