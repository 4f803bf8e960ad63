"""Manifests, result cards, invariance to num_envs / vectorization / completion order, and resume after a kill."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import pytest

from vlm_envs.__main__ import main
from vlm_envs.evaluation import (
    Episode,
    Manifest,
    Reply,
    Settings,
    evaluate,
    load_manifest,
    manifest_names,
    markdown,
    wilson_interval,
)
from vlm_envs.evaluation.card import summarize
from vlm_envs.evaluation.evaluate import journal_path
from vlm_envs.evaluation.manifests import BUILDERS, manifests_dir, numberline_start_states
from vlm_envs.evaluation.policies import RandomPolicy, action_text
from vlm_envs.core.labels import LABEL_KEYS
from vlm_envs.core.registration import CARD_ENVS


def test_shipped_manifests_are_what_the_builders_make():
    assert {"cards-v0", "smoke-v0"} <= set(manifest_names())
    for name in ("cards-v0", "smoke-v0"):
        path = manifests_dir() / f"{name}.json"
        built = BUILDERS[name]()
        assert path.read_text() == built.to_json()
        loaded = load_manifest(name)
        assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() == built.sha256
        assert loaded.episodes == built.episodes


def test_cards_manifest_covers_every_env_and_every_numberline_start():
    manifest = load_manifest("cards-v0")
    counts = {env_id: sum(e.env_id == env_id for e in manifest.episodes) for env_id in CARD_ENVS}
    assert min(counts.values()) >= 500
    env = gym.make("gym_cards/NumberLine-v0").unwrapped
    starts = {}
    for episode in manifest.episodes:
        if episode.env_id == "gym_cards/NumberLine-v0":
            env.reset(seed=episode.seed)
            starts[(env.current, env.target)] = starts.get((env.current, env.target), 0) + 1
    assert set(starts) == set(numberline_start_states()) and len(set(starts.values())) == 1
    assert len({(e.env_id, e.seed) for e in manifest.episodes}) == len(manifest.episodes)


def test_unknown_manifest_and_bad_file_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown manifest 'nope'.*cards-v0"):
        load_manifest("nope")
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x", "episodes": [{"seed": 1}]}')
    with pytest.raises(ValueError, match="bad.json is not a valid manifest"):
        load_manifest(bad)


def test_wilson_interval_known_values():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    low, high = wilson_interval(10, 10)
    assert low == pytest.approx(0.7225, abs=1e-4) and high == 1.0


def _small_manifest(per_env: int = 6) -> Manifest:
    cards = load_manifest("cards-v0")
    picked = [e for env_id in CARD_ENVS for e in [x for x in cards.episodes if x.env_id == env_id][:per_env]]
    return Manifest("small", tuple(picked)).with_hash()


class NoisyPolicy(RandomPolicy):
    """Random, but a third of the answers are garbage (so the parse-failure fallback draws are exercised)."""

    def act(self, requests):
        out = []
        for r in requests:
            rng = r.rng()
            out.append("no idea" if rng.integers(3) == 0 else action_text(r.actions[int(rng.integers(len(r.actions)))]))
        return out


def test_result_card_layout(tmp_path):
    manifest = _small_manifest(2)
    card = evaluate(manifest, "oracle", out=tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == card
    assert {"manifest", "episodes", "summary", "versions", "policy", "settings"} <= set(card)
    assert card["manifest"] == {"name": "small", "sha256": manifest.sha256, "episodes": 8}
    assert set(card["versions"]) == {"vlm_envs", "python", "gymnasium", "alfworld"}
    assert [r["index"] for r in card["episodes"]] == list(range(8))
    for record, episode in zip(card["episodes"], manifest.episodes):
        assert record["env_id"] == episode.env_id and record["seed"] == episode.seed
        assert {"return", "length", "optimal_actions", "success", "parse_failures", "final_info"} <= set(record)
    numberline = card["summary"]["per_env"]["gym_cards/NumberLine-v0"]
    assert numberline["success_rate"] == 1.0 and numberline["wilson_95"] == list(wilson_interval(2, 2))
    assert not journal_path(tmp_path / "r.json").exists()


def test_results_do_not_depend_on_num_envs_vectorization_or_order():
    manifest = _small_manifest()
    settings = Settings(on_parse_failure="random")
    runs = {
        (n, mode, order): evaluate(manifest, NoisyPolicy(), num_envs=n, vectorization=mode, settings=settings,
                                   schedule_seed=order)["episodes"]
        for n, mode, order in [(1, "sync", None), (3, "sync", None), (8, "sync", 7), (3, "sync", 1), (3, "async", None),
                               (8, "async", None)]
    }
    reference = runs[(1, "sync", None)]
    assert sum(r["parse_failures"] for r in reference) > 0  # the fallback draws were exercised
    for key, episodes in runs.items():
        assert episodes == reference, key


class CountingPolicy(RandomPolicy):
    def __init__(self):
        self.episodes: set[int] = set()

    def act(self, requests):
        self.episodes.update(r.episode for r in requests)
        return super().act(requests)


def _write_journal(out: Path, card: dict, records: list[dict]) -> None:
    """The journal a killed run of ``card``'s manifest, policy and settings leaves after ``records``."""
    header = {"manifest": card["manifest"], "policy": card["policy"], "settings": card["settings"]}
    journal_path(out).write_text("".join(json.dumps(x) + "\n" for x in [header, *records]))


def test_resume_after_kill_neither_repeats_nor_loses_episodes(tmp_path):
    episodes = tuple(Episode("gym_cards/Points24-v0", {}, 5000 + i) for i in range(400))
    manifest = Manifest("resume-test", episodes).with_hash()
    manifest_file = tmp_path / "resume-test.json"
    manifest_file.write_text(manifest.to_json())
    out = tmp_path / "results.json"
    process = subprocess.Popen([sys.executable, "-m", "vlm_envs", "evaluate", "--manifest", str(manifest_file),
                                "--policy", "random", "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = journal_path(out)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not journal.exists() or journal.read_text().count("\n") < 20):
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not out.exists(), "the run finished before it could be killed"
    done_before = journal.read_text().count("\n") - 1  # minus the header
    assert 0 < done_before < 400

    counter = CountingPolicy()
    with pytest.raises(ValueError, match="cannot resume"):
        evaluate(manifest, "oracle", out=out, resume=True)
    card = evaluate(load_manifest(manifest_file), counter, out=out, resume=True)
    assert card["complete"] and [r["index"] for r in card["episodes"]] == list(range(400))
    assert len(counter.episodes) == 400 - done_before and not counter.episodes & set(range(done_before))
    fresh = evaluate(manifest, "random")["episodes"]
    assert card["episodes"] == fresh

    assert main(["evaluate", "--manifest", str(manifest_file), "--policy", "random", "--resume", str(out)]) == 0
    assert json.loads(out.read_text())["episodes"] == fresh  # resuming a finished run plays nothing new


def test_a_run_without_resume_refuses_to_overwrite_an_unfinished_journal(tmp_path):
    manifest = _small_manifest(2)
    fresh = evaluate(manifest, "random")
    out = tmp_path / "results.json"
    _write_journal(out, fresh, fresh["episodes"][:2])
    before = journal_path(out).read_text()
    with pytest.raises(ValueError, match="unfinished run.*--resume"):
        evaluate(manifest, "random", out=out)
    with pytest.raises(ValueError, match="unfinished run"):  # refused before the policy is made (no server here)
        evaluate(manifest, "openai:http://127.0.0.1:9/v1", out=out)
    assert journal_path(out).read_text() == before
    assert evaluate(manifest, "random", out=out, resume=True)["episodes"] == fresh["episodes"]


def test_out_may_name_a_folder_that_does_not_exist_yet(tmp_path):
    out = tmp_path / "new" / "folder" / "results.json"
    assert main(["evaluate", "--manifest", "smoke-v0", "--policy", "random", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["complete"]


def test_manifest_check_command(tmp_path, monkeypatch, capsys):
    import vlm_envs.evaluation.__main__ as manifests_cli

    assert manifests_cli.main(["smoke-v0", "cards-v0"]) == 0  # the shipped files are what the builders make
    monkeypatch.setattr(manifests_cli, "manifests_dir", lambda: tmp_path)
    (tmp_path / "smoke-v0.json").write_text("{}")
    assert manifests_cli.main(["smoke-v0"]) == 1
    assert "differs from what the builder makes" in capsys.readouterr().out
    assert manifests_cli.main(["--write", "smoke-v0"]) == 0
    assert (tmp_path / "smoke-v0.json").read_text() == (manifests_dir() / "smoke-v0.json").read_text()


def test_cli_play_options_reach_the_evaluation(tmp_path):
    manifest_file = tmp_path / "small.json"
    manifest_file.write_text(_small_manifest(2).to_json())
    out = tmp_path / "r.json"
    assert main(["evaluate", "--manifest", str(manifest_file), "--policy", "random", "--num-envs", "3",
                 "--vectorization", "async", "--text-mode", "full", "--no-cot", "--out", str(out)]) == 0
    card = json.loads(out.read_text())
    assert card["settings"]["text_mode"] == "full" and card["settings"]["cot"] is False
    api = evaluate(load_manifest(manifest_file), "random", settings=Settings(text_mode="full", cot=False))
    assert card["episodes"] == api["episodes"]  # 3 async envs from the CLI, 1 sync env here


def test_cli_hf_options_reach_the_policy(monkeypatch):
    import vlm_envs.evaluation as evaluation

    made = {}

    def fake_make_policy(spec, **options):
        made.update(options, spec=spec)
        return RandomPolicy()

    monkeypatch.setattr(evaluation, "make_policy", fake_make_policy)
    assert main(["evaluate", "--manifest", "smoke-v0", "--policy", "hf:some/model", "--device", "cuda", "--dtype",
                 "bfloat16", "--conv-template", "chat_template", "--image-mode", "reference", "--temperature", "0.5"]) == 0
    assert made == {"spec": "hf:some/model", "device": "cuda", "dtype": "bfloat16", "conv_template": "chat_template",
                    "image_mode": "reference", "temperature": 0.5, "max_new_tokens": 256}


@pytest.mark.parametrize("argv, message", [
    (["--env", "CartPole-v1"], "'CartPole-v1' is not an env of vlm_envs"),
    (["--manifest", "smoke-v0", "--resume", "RESULTS", "--policy", "oracle"], "cannot resume from"),
])
def test_cli_usage_errors_are_messages_not_tracebacks(tmp_path, capsys, argv, message):
    results = tmp_path / "r.json"
    assert main(["evaluate", "--manifest", "smoke-v0", "--policy", "random", "--out", str(results)]) == 0
    argv = [str(results) if a == "RESULTS" else a for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_cli_errors_while_playing_keep_their_traceback(monkeypatch):
    import vlm_envs.evaluation as evaluation

    class Broken(RandomPolicy):
        def act(self, requests):
            raise ValueError("a bug in the policy")

    monkeypatch.setattr(evaluation, "make_policy", lambda spec, **options: Broken())
    with pytest.raises(ValueError, match="a bug in the policy"):  # not a usage error
        main(["evaluate", "--manifest", "smoke-v0", "--policy", "random"])


def test_policy_kinds_come_from_the_registry(monkeypatch):
    from vlm_envs.evaluation import make_policy, policy_kinds, register_policy
    from vlm_envs.evaluation import registry

    monkeypatch.setattr(registry, "_registered", {})
    made = []
    register_policy("scripted", lambda target, **options: made.append((target, options)) or RandomPolicy())
    assert isinstance(make_policy("scripted:v1", temperature=0.5), RandomPolicy)
    assert made == [("v1", {"temperature": 0.5})]
    assert {"openai", "scripted"} <= set(policy_kinds())
    with pytest.raises(ValueError, match="already registered"):
        register_policy("scripted", lambda target: RandomPolicy())
    with pytest.raises(ValueError, match="unknown policy kind 'nope'"):
        make_policy("nope:x")
    from vlm_envs.evaluation.openai_policy import OpenAIPolicy

    assert registry.policy_factory("openai") is OpenAIPolicy


def test_hf_policy_is_found_through_its_entry_point(monkeypatch):
    """vlm_envs finds ``hf:`` in the install's entry points (declared in setup.cfg), never by importing the trainer."""
    import configparser
    from importlib.metadata import EntryPoint

    from vlm_envs.evaluation import registry

    setup = configparser.ConfigParser()
    setup.read(Path(__file__).resolve().parents[2] / "setup.cfg")
    declared = [EntryPoint(name.strip(), value.strip(), registry.ENTRY_POINT_GROUP) for name, value in
                (line.split("=") for line in setup["options.entry_points"][registry.ENTRY_POINT_GROUP].split("\n") if line)]
    # light: the model code loads when a policy is made. Importing it registers hf:, so the registry is
    # emptied after it: only the entry point can find hf: again.
    from baselines.vlm_ppo.hf_policy import HFPolicy

    monkeypatch.setattr(registry, "_registered", {})
    monkeypatch.setattr(registry, "entry_points", lambda group: [ep for ep in declared if ep.group == group])
    assert "hf" not in registry._registered
    assert registry.policy_factory("hf") is HFPolicy


def test_hf_policy_without_the_trainer_names_the_extra(monkeypatch, capsys):
    from gymnasium.error import DependencyNotInstalled

    from vlm_envs.evaluation import make_policy, registry

    monkeypatch.setattr(registry, "_registered", {})
    monkeypatch.setattr(registry, "entry_points", lambda group: [])  # an install without the trainer's entry point
    with pytest.raises(DependencyNotInstalled, match=r'pip install "vlm-envs\[train\]"'):
        make_policy("hf:some/model")
    with pytest.raises(SystemExit):
        main(["evaluate", "--manifest", "smoke-v0", "--policy", "hf:some/model"])
    assert 'the hf: policy needs the "train" extra' in capsys.readouterr().err


def test_play_ends_episodes_at_max_steps_and_applies_the_format_penalty():
    """What the trainer's held-out evaluation needs of the runner: its step limit and its penalty."""
    from vlm_envs.evaluation.manifests import seeds_manifest
    from vlm_envs.evaluation.runner import play

    class Unparsable(RandomPolicy):
        def act(self, requests):
            return ["no action here"] * len(requests)

    settings = Settings(on_parse_failure="penalty", format_penalty=-0.5)
    records = play(seeds_manifest(["gym_cards/NumberLine-v0"], 2, 5), Unparsable(), indices=range(2), num_envs=2,
                   settings=settings, max_steps=3)
    assert [(r["length"], r["return"], r["truncated"], r["terminated"], r["parse_failures"]) for r in records.values()] \
        == [(3, -1.5, True, False, 3)] * 2


def test_prompts_are_built_from_the_observation_text():
    """An env made with text_mode="full" is prompted with its observation text, as the trainer and run_agent do."""
    from vlm_envs.evaluation.manifests import seeds_manifest
    from vlm_envs.evaluation.runner import play
    from vlm_envs.text.prompts import build_prompt

    seen = []

    class Recording(RandomPolicy):
        def act(self, requests):
            seen.extend(requests)
            return super().act(requests)

    play(seeds_manifest(["gym_cards/Points24-v0"], 1, 3, {"text_mode": "full"}), Recording(), indices=[0])
    env = gym.make("gym_cards/Points24-v0", text_mode="full")
    obs, _ = env.reset(seed=3)
    assert seen[0].prompt == build_prompt(env.unwrapped.prompt_task, obs["text"], **env.unwrapped.prompt_params)


def test_policy_errors_count_as_parse_failures_with_reason():
    class Failing(RandomPolicy):
        def act(self, requests):
            return [Reply("", error="server kept failing: HTTP 500") for _ in requests]

    card = evaluate(_small_manifest(1), Failing(), settings=Settings(on_parse_failure="random"))
    for record in card["episodes"]:
        assert record["parse_failures"] == record["length"]
        assert record["parse_failure_reasons"] == {"policy: server kept failing: HTTP 500": record["length"]}


def test_card_reports_the_fraction_of_optimal_actions():
    oracle = evaluate("smoke-v0", "oracle")
    assert all(r["optimal_actions"] == r["length"] > 0 for r in oracle["episodes"])
    for summary in oracle["summary"]["per_env"].values():
        assert summary["optimal_action_fraction"] == 1.0 and summary["optimal_action_wilson_95"][1] == 1.0
    random = evaluate("smoke-v0", "random")["summary"]["per_env"]
    fractions = [s["optimal_action_fraction"] for s in random.values()]
    assert all(0 <= f <= 1 for f in fractions) and min(fractions) < 1
    for s in random.values():
        steps = round(s["mean_length"] * s["episodes"])
        assert s["optimal_action_wilson_95"] == list(wilson_interval(s["optimal_actions"], steps))
    assert "optimal %" in markdown(oracle) and "| 100.0 " in markdown(oracle)


def test_resume_from_a_journal_written_before_the_labels(tmp_path):
    """Records without ``optimal_actions`` (an older run) still resume; their groups report null, the others a fraction."""
    manifest = _small_manifest(2)
    fresh = evaluate(manifest, "random")
    out = tmp_path / "results.json"
    old = [{**{k: v for k, v in r.items() if k != "optimal_actions"},
            "final_info": {k: v for k, v in r["final_info"].items() if k not in LABEL_KEYS}}
           for r in fresh["episodes"] if r["index"] < 2]
    _write_journal(out, fresh, old)
    card = evaluate(manifest, "random", out=out, resume=True)
    assert card["complete"] and [r for r in card["episodes"] if r["index"] < 2] == old
    per_env = card["summary"]["per_env"]
    assert per_env["gym_cards/NumberLine-v0"]["optimal_action_fraction"] is None  # the old records' env
    before = fresh["summary"]["per_env"]
    assert per_env["gym_cards/NumberLine-v0"]["success_rate"] == before["gym_cards/NumberLine-v0"]["success_rate"]
    assert all(per_env[e] == before[e] for e in per_env if e != "gym_cards/NumberLine-v0")
    assert "| -" in markdown(card)


def test_a_journal_of_an_older_run_still_summarises():
    """An excerpt of the SmolLM2 run's journal: NumberLine records from before the labels existed,
    EZPoints records from before and after; a group missing any label reports null."""
    lines = (Path(__file__).resolve().parents[1] / "data" / "journal_before_labels.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines[1:] if line.strip()]
    per_env = summarize(records)["per_env"]
    assert {e: s["episodes"] for e, s in per_env.items()} == {"gym_cards/NumberLine-v0": 6, "gym_cards/EZPoints-v0": 6}
    assert all(s["optimal_action_fraction"] is None for s in per_env.values())
    assert summarize([r for r in records if "optimal_actions" in r])["per_env"]["gym_cards/EZPoints-v0"][
        "optimal_action_fraction"] is not None


def test_a_kill_while_resume_rewrites_the_journal_loses_nothing(tmp_path, monkeypatch):
    """Resuming rewrites the journal's kept records; a kill in the middle must leave the old journal whole."""
    manifest = _small_manifest(2)
    fresh = evaluate(manifest, "random")
    out = tmp_path / "results.json"
    _write_journal(out, fresh, [r for r in fresh["episodes"] if r["index"] < 3])
    before = journal_path(out).read_text()
    real_dumps = json.dumps

    def killed_at_the_second_record(obj, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("index") == 1:
            raise KeyboardInterrupt
        return real_dumps(obj, *args, **kwargs)

    monkeypatch.setattr(json, "dumps", killed_at_the_second_record)
    with pytest.raises(KeyboardInterrupt):
        evaluate(manifest, "random", out=out, resume=True)
    monkeypatch.undo()
    assert journal_path(out).read_text() == before
    card = evaluate(manifest, "random", out=out, resume=True)
    assert card["complete"] and card["episodes"] == fresh["episodes"]


# A released manifest never changes: new episodes or games get a new version name, and this
# table gets a new row instead of an edited one.
SHIPPED_MANIFEST_SHA256 = {
    "alfworld-in-distribution-v0": "734d02883032526b1a94ff4b4fd006cffdd66dfcd3decf475031957885e7d270",
    "alfworld-out-of-distribution-v0": "1c2b0fae13940169009776235aae7463b7fce68a8704d91dcefa26d683bb854b",
    "cards-v0": "692e2b5557f6632568e80c33d3280dc8de8b0a7758442920968be8aa70126ac5",
    "smoke-v0": "ed2b68374bfe65c6a523634fbf1211aaed5903d52e706aaf113cb2c9cf117326",
}


def test_shipped_manifests_are_frozen():
    assert {name: load_manifest(name).sha256 for name in manifest_names()} == SHIPPED_MANIFEST_SHA256


ALFWORLD_MIX = {
    "alfworld-in-distribution-v0": {"pick_and_place_simple": 35, "look_at_obj_in_light": 13,
                                    "pick_clean_then_place_in_recep": 27, "pick_heat_then_place_in_recep": 16,
                                    "pick_cool_then_place_in_recep": 25, "pick_two_obj_and_place": 24},
    "alfworld-out-of-distribution-v0": {"pick_and_place_simple": 24, "look_at_obj_in_light": 18,
                                        "pick_clean_then_place_in_recep": 31, "pick_heat_then_place_in_recep": 23,
                                        "pick_cool_then_place_in_recep": 21, "pick_two_obj_and_place": 17},
}


@pytest.mark.parametrize("name", sorted(ALFWORLD_MIX))
def test_alfworld_manifests_have_the_official_sizes_and_verified_games(name):
    from vlm_envs.alfworld_wrap import shipped_games_dir

    manifest = load_manifest(name)
    assert (manifests_dir() / f"{name}.json").read_text() == BUILDERS[name]().to_json()
    root = shipped_games_dir()
    mix: dict[str, int] = {}
    for episode in manifest.episodes:
        folder = (root / episode.game["path"]).parent
        assert hashlib.sha256((root / episode.game["path"]).read_bytes()).hexdigest() == episode.game["sha256"]
        task_type = json.loads((folder / "traj_data.json").read_text())["task_type"]
        mix[task_type] = mix.get(task_type, 0) + 1
    assert mix == ALFWORLD_MIX[name]
    assert len({e.game["path"] for e in manifest.episodes}) == len(manifest.episodes)


def test_the_committed_smollm2_card_is_complete_and_is_the_readme_row():
    root = Path(__file__).resolve().parents[2]
    card = json.loads((root / "docs" / "results" / "smollm2-135m-cards-v0.json").read_text())
    manifest = load_manifest("cards-v0")
    assert card["complete"] and card["manifest"]["sha256"] == manifest.sha256
    assert [(r["env_id"], r["seed"]) for r in card["episodes"]] == [(e.env_id, e.seed) for e in manifest.episodes]
    assert summarize(card["episodes"]) == card["summary"]
    cells = []
    for env_id in CARD_ENVS:
        group = card["summary"]["per_env"][env_id]
        low, high = group["wilson_95"]
        cells.append(f"{100 * group['success_rate']:.1f} ({100 * low:.1f}-{100 * high:.1f})")
    row = next(line for line in (root / "README.md").read_text().splitlines() if line.startswith("| SmolLM2-135M"))
    assert row.split(" | ")[1:5] == cells
