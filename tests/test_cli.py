"""``python -m vlm_envs evaluate`` runs end to end and prints the table."""

from __future__ import annotations

import subprocess
import sys

from vlm_envs.__main__ import main


def test_evaluate_oracle_table(capsys, tmp_path):
    assert main(["evaluate", "--env", "gym_cards/EZPoints-v0", "--episodes", "20", "--save-frames", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "EZPoints" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:4] == ["oracle", "20", "100.0"] and cells[6] == "0"
    assert sorted(p.name for p in tmp_path.iterdir())[0] == "gym_cards_EZPoints-v0_step000.png"


def test_evaluate_all_random(capsys):
    assert main(["evaluate", "--policy", "random", "--episodes", "5", "--seed", "3"]) == 0
    assert sum("gym_cards/" in line for line in capsys.readouterr().out.splitlines()) == 4


def test_unknown_env_is_a_clear_error():
    result = subprocess.run([sys.executable, "-m", "vlm_envs", "evaluate", "--env", "nope/Nope-v0"], capture_output=True, text=True)
    assert result.returncode == 2 and "unknown env id" in result.stderr
