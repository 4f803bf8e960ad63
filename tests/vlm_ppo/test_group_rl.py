"""The critic-free, group-relative algorithms (GRPO, RLOO, GiGPO) and the PPO options beside them
(value clip, format failures in the policy loss): advantage maths by hand, group rollouts, the
whole loop and bit-identical resume on a tiny LLaVA, CPU only."""

from __future__ import annotations

import dataclasses
import json
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from baselines.vlm_ppo.algo import group_advantages, ppo_losses, returns_to_go, value_loss
from baselines.vlm_ppo.config import CRITIC_FREE, Config, parse_args
from tests.utils import checkpoint_copy, vectorization_server
from tests.utils import family_config as _config

S2 = 1 / math.sqrt(2)  # |x - mean| / std of two different values


@pytest.fixture(scope="module", autouse=True)
def _threads(one_torch_thread):
    """One torch thread for every test here."""


def _advantages(rewards, ends, groups, **kwargs):
    out = group_advantages(torch.tensor(rewards, dtype=torch.float32), torch.tensor(ends), torch.tensor(groups),
                           kwargs.pop("gamma", 0.9), **kwargs)
    return out.tolist()


# --- advantage maths, by hand ------------------------------------------------------------------
def test_grpo_normalises_each_return_within_its_group_and_a_group_of_one_gets_zero():
    # group 0: episode A (2 steps, return 1) and B (1 step, return 0); group 1: one episode alone
    rewards, ends, groups = [0.0, 1.0, 0.0, 2.0], [False, True, True, True], [0, 0, 0, 1]
    assert _advantages(rewards, ends, groups) == pytest.approx([S2, S2, -S2, 0.0], abs=1e-5)
    assert _advantages(rewards, ends, groups, divide_by_std=False) == pytest.approx([0.5, 0.5, -0.5, 0.0])


def test_equal_returns_give_zero_not_nan():
    for kwargs in ({}, {"divide_by_std": False}, {"baseline": "leave_one_out"}):
        assert _advantages([3.0, 1.0, 2.0, 3.0], [True, False, True, True], [0, 0, 0, 0], **kwargs) == [0.0] * 4


def test_rloo_subtracts_the_mean_of_the_other_members():
    out = _advantages([3.0, 1.0, 2.0, 7.0], [True] * 4, [0, 0, 0, 1], baseline="leave_one_out")
    assert out == pytest.approx([3 - 1.5, 1 - 2.5, 2 - 2.0, 0.0])


def test_gigpo_steps_in_the_same_state_within_a_group_truncated_and_revisited():
    """Group 0: episode A visits s, t, s and is truncated (no value after it: the tail is 0), episode
    B visits s, u; group 1: episode C in state s alone. γ 0.5, ω 1, means only.
    Returns-to-go: A 0.25, 0.5, 1; B 1.5, 3; C 5. Episode level: A 1 - 2, B 3 - 2, C 0.
    Anchor s of group 0 holds A0, A2 (the revisit) and B0: mean 2.75 / 3; t, u and group 1's s are alone."""
    rewards = [0.0, 0.0, 1.0, 0.0, 3.0, 5.0]
    ends = [False, False, True, False, True, True]
    groups = [0, 0, 0, 0, 0, 1]
    s, t, u = 0, 1, 2
    anchor = torch.tensor([s, t, s, s, u, s])
    assert returns_to_go(torch.tensor(rewards), torch.tensor(ends), 0.5).tolist() == pytest.approx([0.25, 0.5, 1, 1.5, 3, 5])
    mean_s = 2.75 / 3
    expected = [-1 + 0.25 - mean_s, -1.0, -1 + 1 - mean_s, 1 + 1.5 - mean_s, 1.0, 0.0]
    out = _advantages(rewards, ends, groups, gamma=0.5, divide_by_std=False, step_weight=1.0, anchor=anchor)
    assert out == pytest.approx(expected)
    halved = _advantages(rewards, ends, groups, gamma=0.5, divide_by_std=False, step_weight=0.5, anchor=anchor)
    assert halved == pytest.approx([-1 + 0.5 * (0.25 - mean_s), -1.0, -1 + 0.5 * (1 - mean_s), 1 + 0.5 * (1.5 - mean_s), 1.0, 0.0])
    x = torch.tensor([0.25, 1.0, 1.5])
    step_s = ((x - x.mean()) / (x.std() + 1e-6)).tolist()
    with_std = _advantages(rewards, ends, groups, gamma=0.5, step_weight=1.0, anchor=anchor)
    assert with_std == pytest.approx([-S2 + step_s[0], -S2, -S2 + step_s[1], S2 + step_s[2], S2, 0.0], abs=1e-5)


def test_group_advantages_refuse_a_cut_episode_and_a_missing_anchor():
    with pytest.raises(ValueError, match="whole episodes"):
        _advantages([1.0, 0.0], [True, False], [0, 0])
    with pytest.raises(ValueError, match="anchor"):
        _advantages([1.0], [True], [0], step_weight=1.0)


# --- the value clip --------------------------------------------------------------------------------
def test_value_clip_is_its_own_option():
    new, old, ret = torch.tensor([2.0]), torch.tensor([0.0]), torch.tensor([3.0])
    assert value_loss(new, old, ret, 0.0).item() == pytest.approx(0.5)  # unclipped
    assert value_loss(new, old, ret, 0.1).item() == pytest.approx(0.5 * 2.9 ** 2)  # V held at 0.1
    z = torch.zeros(1)
    out = ppo_losses(z, z, z, torch.ones(1, dtype=torch.bool), new, old, ret, clip=0.2, value_clip=0.5)
    assert out["value_loss"].item() == pytest.approx(0.5 * 2.5 ** 2)  # the value's clip, not the policy's
    assert "value_loss" not in ppo_losses(z, z, z, torch.ones(1, dtype=torch.bool), None, None, None, clip=0.2)
    assert parse_args(["ppo", "--preset", "paper"])[1].value_clip == 0.1  # RL4VLM's, kept explicit
    assert parse_args(["ppo", "--preset", "cpu-tiny"])[1].value_clip == 0.1  # what its experiments ran with
    _, cfg = parse_args(["ppo", "--clip", "0.2", "--value-clip", "1.5"])
    assert (cfg.clip, cfg.value_clip) == (0.2, 1.5)


def test_trainer_clips_the_value_with_value_clip(tmp_path, family_path, monkeypatch):
    from baselines.vlm_ppo import train

    seen = []
    original = train.ppo_losses
    monkeypatch.setattr(train, "ppo_losses", lambda *a, **k: seen.append((a[7], k["value_clip"])) or original(*a, **k))
    train.train_ppo(_config(tmp_path, family_path("llava"), clip=0.2, value_clip=0.0, ppo_epochs=1))
    assert seen and set(seen) == {(0.2, 0.0)}


# --- format failures in the policy loss --------------------------------------------------------------
def _tiny_policy(family_path, **kwargs):
    from baselines.vlm_ppo.train import build_policy

    return build_policy(_config("unused", family_path("llava"), **kwargs))


def test_format_failures_stay_in_the_policy_loss_when_cut_off_or_penalised(family_path):
    from baselines.vlm_ppo.rollout import FormatFailures, answer_boundaries

    policy = _tiny_policy(family_path)
    tok = policy.encoder.tokenizer
    eos = tok.eos_token_id
    no_key = tok(' {"thoughts": "hmm"}', add_special_tokens=False)["input_ids"]
    keyed = tok(' {"action": "1"}', add_special_tokens=False)["input_ids"] + [eos]
    answers = [no_key, no_key + [eos], no_key + [eos], keyed]  # cut off, stopped, stopped, with a key
    infos = [{"parse_ok": False}, {"parse_ok": False}, {"parse_ok": True}, {"parse_ok": True}]
    masked = answer_boundaries(policy, answers, infos, "mask", None)
    assert masked[:3] == [None, None, None] and masked[3] is not None
    cut_only = answer_boundaries(policy, answers, infos, "mask", FormatFailures(penalised=False))
    assert cut_only == [len(no_key), None, None, masked[3]]  # the whole cut-off answer, as thought tokens
    penalised = answer_boundaries(policy, answers, infos, "mask", FormatFailures(penalised=True))
    assert penalised == [len(no_key), len(no_key) + 1, None, masked[3]]


def test_rollout_keeps_cut_off_answers_with_lambda_on_every_token(tmp_path, family_path):
    """Answers of 4 tokens from the random tiny model: all cut off, none with a key. With the option
    every one enters the policy loss, its log-prob λ times the sum over all its tokens."""
    from baselines.vlm_ppo.envs import TrainingEnvs
    from baselines.vlm_ppo.rollout import EpisodeStats, FormatFailures, collect_rollout, score_rollout

    cfg = _config(tmp_path, family_path("llava"), max_new_tokens=4)
    policy = _tiny_policy(family_path)
    for keep in (None, FormatFailures(penalised=False)):
        envs = TrainingEnvs(cfg)
        envs.reset()
        stats = EpisodeStats(np.zeros(2), np.zeros(2, dtype=int))
        torch.manual_seed(0)
        rollout = collect_rollout(policy, envs, stats, 2, 4, "mask", True, keep)
        envs.close()
        assert all(len(a) == 4 and a[-1] not in policy.stop_ids for a in rollout.answers)
        assert bool(rollout.policy_valid.any()) == (keep is not None)
    assert bool(rollout.policy_valid.all())
    score_rollout(policy, rollout, [[0, 1, 2, 3]], with_reference=False)
    assert torch.allclose(rollout.logprobs, policy.thought_coef * rollout.thought_logprobs, atol=1e-5)
    assert rollout.action_logprobs.abs().max() == 0


def test_keep_format_failures_needs_mask(tmp_path, family_path):
    from baselines.vlm_ppo.train import train_ppo

    with pytest.raises(ValueError, match="missing-action-key mask"):
        train_ppo(_config(tmp_path, family_path("llava"), keep_format_failures=True, missing_action_key="last5"))


# --- group rollouts ------------------------------------------------------------------------------
def test_group_settings_are_checked_at_start():
    from baselines.vlm_ppo.train import check_config

    with pytest.raises(ValueError, match="num_envs=6 must be a multiple of group_size=4"):
        check_config(Config(algo="grpo", num_envs=6, group_size=4, minibatch_size=1))
    with pytest.raises(ValueError, match="group_size >= 2"):
        check_config(Config(algo="rloo", num_envs=2, group_size=1))
    with pytest.raises(ValueError, match="critic-free"):
        check_config(Config(algo="ppo", num_envs=2, group_size=2))
    check_config(Config(algo="gigpo", num_envs=4, group_size=2))
    for weight in (-0.5, float("nan")):
        with pytest.raises(ValueError, match="step_adv_weight must be a finite number >= 0"):
            check_config(Config(algo="gigpo", num_envs=4, group_size=2, step_adv_weight=weight))
    with pytest.raises(SystemExit):
        parse_args(["ppo", "--algo", "a2c"])


def test_group_rollout_plays_whole_episodes_from_shared_seeds(tmp_path, family_path):
    """4 envs in 2 groups of 2 on Blackjack: each group plays its episodes from one seed (the same
    first state for both members, different between groups and rounds), every episode in the
    column is whole, the rollout holds at least its budget, and every seed is a training seed."""
    from baselines.vlm_ppo.envs import TrainingEnvs
    from vlm_envs.evaluation.seeds import TRAIN_SEED_BASE, check_eval_seeds
    from baselines.vlm_ppo.rollout import EpisodeStats, collect_group_rollout

    cfg = _config(tmp_path, family_path("llava"), env_id="gym_cards/Blackjack-v0", algo="gigpo", num_envs=4,
                  group_size=2)
    policy = _tiny_policy(family_path, algo="gigpo")
    envs = TrainingEnvs(cfg)
    envs.reset()
    seeds_before = envs.state()["seeds"]
    stats = EpisodeStats(np.zeros(4), np.zeros(4, dtype=int))
    torch.manual_seed(0)
    rollout = collect_group_rollout(policy, envs, stats, 9, cfg.max_new_tokens, "mask")
    seeds_after = envs.state()["seeds"]
    envs.close()
    ends = (rollout.terminated | rollout.truncated)[:, 0].tolist()
    assert rollout.num_envs == 1 and rollout.num_steps == len(rollout.answers) >= 9 and ends[-1]
    starts = [0] + [t + 1 for t, e in enumerate(ends[:-1]) if e]
    by_group: dict[int, list[str]] = {}
    for t in starts:
        by_group.setdefault(rollout.groups[t], []).append(rollout.state_keys[t])
    assert len(by_group) >= 2 and all(len(keys) == 2 and keys[0] == keys[1] for keys in by_group.values())
    # each step is keyed by the state it acted on: an episode's first step by its deal's state
    fresh = gym.make("gym_cards/Blackjack-v0", oracle_labels=True)
    first_deals = [fresh.reset(seed=seeds_before[m])[1]["state_key"] for m in (0, 2)]
    assert rollout.state_keys[0] == first_deals[0] and set(first_deals) <= {rollout.state_keys[t] for t in starts}
    assert len({keys[0] for keys in by_group.values()}) == len(by_group)  # each group episode its own deal
    assert len(stats.finished) == 2 * len(by_group)
    assert seeds_before[0] == seeds_before[1] != seeds_before[2] == seeds_before[3]
    assert seeds_after[0] == seeds_after[1] and not set(seeds_after) & set(seeds_before)
    assert min(seeds_before + seeds_after) >= TRAIN_SEED_BASE
    check_eval_seeds(cfg.eval_seed, cfg.eval_episodes)  # every evaluation seed lies below them


# --- the whole loop, resume -------------------------------------------------------------------------
def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.fixture
def moves_that_parse(monkeypatch):
    """The random tiny model never writes a parsable answer, and an unparsable one falls back to a
    move drawn from the episode seed: the same in every member of a group, so every return ties.
    Each answer is read as a Blackjack move by a checksum of its text instead: still the policy's
    choice, so sampling tells the members apart and the update reinforces what won."""
    import zlib

    from baselines.vlm_ppo.envs import TrainingEnvs

    step_groups = TrainingEnvs.step_groups

    def parsable(self, texts, active):
        moves = ['{"action": "%s"}' % ("hit", "stand")[zlib.crc32(t.encode()) % 2] for t in texts]
        return step_groups(self, moves, active)

    monkeypatch.setattr(TrainingEnvs, "step_groups", parsable)


@pytest.mark.parametrize("algo", CRITIC_FREE)
def test_critic_free_loop_trains_without_a_value_head(tmp_path, family_path, algo, moves_that_parse):
    """Two updates on Blackjack, 4 envs in one group: the policy moves, no value head exists
    (in the model, the optimizer or the checkpoint), and the run takes PPO's env-step budget."""
    from baselines.vlm_ppo import train

    built = []
    setup = train.setup

    def recording_setup(cfg):
        run = setup(cfg)
        built.append((run.policy.value_head, sum(len(g["params"]) for g in run.optimizer.param_groups),
                      sum(1 for p in run.policy.parameters() if p.requires_grad)))
        return run

    train.setup = recording_setup
    try:
        cfg = _config(tmp_path, family_path("llava"), env_id="gym_cards/Blackjack-v0", algo=algo, num_envs=4,
                      group_size=4, num_updates=2, num_steps=4)
        metrics = train.train_ppo(cfg)
    finally:
        train.setup = setup
    (head, optimised, trainable), = built
    assert head is None and optimised == trainable
    assert "losses/value_loss" not in metrics and np.isfinite(metrics["losses/policy_loss"])
    assert max(float(r["charts/adv_abs_mean"]) for r in _metric_rows(tmp_path / "metrics.csv")) > 0
    ckpt = tmp_path / "checkpoints" / "update_00001"
    assert not (ckpt / "value_head.safetensors").exists()
    before, after = _weights(family_path("llava")), _weights(ckpt / "model")
    assert any(not torch.equal(before[k], after[k]) for k in before if "lm_head" in k)
    state = json.loads((ckpt / "trainer_state_0.json").read_text())
    budget = cfg.num_updates * cfg.num_steps * cfg.num_envs
    assert state["algo"] == algo and budget <= state["global_step"] < budget + cfg.num_envs * 10


def test_kl_penalty_with_a_critic_free_algorithm(tmp_path, family_path, moves_that_parse):
    from baselines.vlm_ppo.train import train_ppo

    metrics = train_ppo(_config(tmp_path, family_path("llava"), env_id="gym_cards/Blackjack-v0", algo="grpo",
                                num_envs=4, group_size=4, num_steps=4, lora_r=4, lora_alpha=8, kl_coef=0.5,
                                num_updates=2))
    assert metrics["losses/kl"] > 0.0 and np.isfinite(metrics["losses/kl"])


def _metric_rows(path):
    import csv

    with open(path) as f:
        return [{k: v for k, v in r.items() if not k.endswith("_s") and k != "charts/tokens_per_s"}
                for r in csv.DictReader(f)]


@pytest.mark.parametrize("vectorization", ["sync", "async"])
@pytest.mark.parametrize("algo", CRITIC_FREE)
def test_critic_free_resume_is_bit_identical(tmp_path, family_path, algo, vectorization, moves_that_parse):
    from baselines.vlm_ppo.train import train_ppo

    cfg = _config(tmp_path / "a", family_path("llava"), env_id="gym_cards/Blackjack-v0", algo=algo, num_envs=4,
                  group_size=2, num_updates=3, num_steps=3, vectorization=vectorization)
    train_ppo(cfg)
    first = _weights(tmp_path / "a" / "checkpoints" / "update_00000" / "model")
    checkpoint_copy(tmp_path / "a", tmp_path / "b")
    train_ppo(dataclasses.replace(cfg, output_dir=str(tmp_path / "b"), resume=True))
    assert _metric_rows(tmp_path / "a" / "metrics.csv") == _metric_rows(tmp_path / "b" / "metrics.csv")
    a, b = (_weights(tmp_path / d / "checkpoints" / "update_00002" / "model") for d in "ab")
    assert any(not torch.equal(a[k], first[k]) for k in a)  # the resumed updates moved the policy
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("vectorization", ["ray", "remote"])
def test_gigpo_through_actor_envs_is_the_sync_run_and_resumes(tmp_path, family_path, vectorization,
                                                              moves_that_parse, monkeypatch):
    """Group rollouts reset members to shared seeds and idle finished ones through the vector env's
    own API, so GiGPO over Ray actors or an env server plays exactly the sync run (same metrics,
    same weights) and resumes from its checkpoint bit-identically."""
    from baselines.vlm_ppo import envs
    from baselines.vlm_ppo.train import train_ppo
    from vlm_envs.running.actor_vector import ActorVectorEnv

    built = []
    make_vec_env = envs.make_vec_env
    monkeypatch.setattr(envs, "make_vec_env", lambda *a, **k: built.append(make_vec_env(*a, **k)) or built[-1])
    server = vectorization_server(vectorization, "gym_cards/Blackjack-v0")
    settings = dict(env_id="gym_cards/Blackjack-v0", algo="gigpo", num_envs=4, group_size=2, num_updates=3,
                    num_steps=3)
    train_ppo(_config(tmp_path / "sync", family_path("llava"), **settings))
    with server as url:
        cfg = _config(tmp_path / "a", family_path("llava"), vectorization=vectorization, env_url=url, **settings)
        train_ppo(cfg)
        checkpoint_copy(tmp_path / "a", tmp_path / "b")
        train_ppo(dataclasses.replace(cfg, output_dir=str(tmp_path / "b"), resume=True))
    assert [isinstance(v, ActorVectorEnv) for v in built] == [False, True, True]  # sync, then the actors twice
    rows = [_metric_rows(tmp_path / d / "metrics.csv") for d in ("sync", "a", "b")]
    assert rows[0] == rows[1] == rows[2]
    final = [_weights(tmp_path / d / "checkpoints" / "update_00002" / "model") for d in ("sync", "a", "b")]
    assert all(torch.equal(final[0][k], w[k]) for w in final[1:] for k in final[0])


def test_resume_refuses_another_algorithm(tmp_path, family_path):
    from baselines.vlm_ppo.train import train_ppo

    cfg = _config(tmp_path, family_path("llava"), env_id="gym_cards/Blackjack-v0", algo="grpo", num_envs=2,
                  group_size=2)
    train_ppo(cfg)
    with pytest.raises(ValueError, match="written by algo=grpo, this run is algo=ppo"):
        train_ppo(dataclasses.replace(cfg, algo="ppo", group_size=1, resume=True, num_updates=2))


def test_critic_free_run_stops_at_ppo_env_step_budget(tmp_path, family_path):
    """Updates of 4 env steps (4 envs x 1) cannot hold a round of whole Blackjack episodes: each update
    overshoots, so the run stops once it has taken PPO's 6 x 4 env steps, before its 6th update,
    and checkpoints there."""
    from baselines.vlm_ppo.train import train_ppo

    cfg = _config(tmp_path, family_path("llava"), env_id="gym_cards/Blackjack-v0", algo="rloo", num_envs=4,
                  group_size=2, num_steps=1, num_updates=6, save_every=0, minibatch_size=2)
    train_ppo(cfg)
    rows = _metric_rows(tmp_path / "metrics.csv")
    steps = [int(r["env_steps"]) for r in rows]
    assert len(rows) < 6 and steps[-2] < 6 * 4 <= steps[-1]
    assert steps == list(np.cumsum([int(float(r["charts/env_steps"])) for r in rows]))
    assert (tmp_path / "checkpoints" / "latest").read_text() == f"update_{len(rows) - 1:05d}"
