"""Every script under examples/ runs end to end with a tiny budget (cleanrl's pattern: examples cannot rot)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, *args: str, timeout: int = 300) -> str:
    result = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                            timeout=timeout, cwd=EXAMPLES.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_cleanrl_ppo_example():
    pytest.importorskip("torch")
    out = run_example("cleanrl_ppo.py", "--total-timesteps", "256", "--num-envs", "2", "--num-steps", "64")
    assert "iteration 2/2 global_step=256" in out and "charts/success_rate" in out


@pytest.mark.slow
def test_hf_agent_example_with_the_tiny_model(tmp_path):
    pytest.importorskip("transformers")
    records = tmp_path / "turns.jsonl"
    out = run_example("hf_agent.py", "--episodes", "2", "--max-new-tokens", "8", "--save", str(records))
    # the summary is the example's first JSON line; an installed DeepSpeed logs a line of its own first
    summary = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    assert summary["episodes"] >= 2 and summary["turns"] >= 2
    assert len(records.read_text().splitlines()) == summary["turns"]


@pytest.mark.slow
def test_trl_grpo_example_multi_turn_on_cpu():
    pytest.importorskip("trl")
    pytest.importorskip("datasets")
    out = run_example("trl_grpo.py", "--episodes", "4", "--num-generations", "4", "--max-steps", "2", "--max-turns", "3")
    summary = ast.literal_eval(out.strip().splitlines()[-1])
    assert summary["episodes"] == 8
    steps = [row for row in summary["log"] if "reward" in row]
    assert len(steps) == 2 and any(row["reward_std"] > 0 and row["grad_norm"] > 0 for row in steps)


@pytest.mark.slow
def test_trl_grpo_example_plays_through_an_openenv_server():
    pytest.importorskip("trl")
    pytest.importorskip("openenv.core")
    from vlm_envs.remote.server import create_app, serve_in_thread

    with serve_in_thread(create_app("gym_cards/NumberLine-v0", max_sessions=4, token="grpo-token")) as url:
        out = run_example("trl_grpo.py", "--env-url", url, "--env-token", "grpo-token", "--episodes", "2",
                          "--num-generations", "2", "--max-steps", "1", "--max-turns", "2")
    summary = ast.literal_eval(out.strip().splitlines()[-1])
    assert summary["episodes"] == 2 and len([row for row in summary["log"] if "reward" in row]) == 1
