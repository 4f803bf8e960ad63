"""``python -m vlm_envs evaluate`` runs end to end and prints the table."""

from __future__ import annotations

import subprocess
import sys

from vlm_envs.__main__ import main


def test_evaluate_oracle_table(capsys, tmp_path):
    assert main(["evaluate", "--env", "gym_cards/EZPoints-v0", "--episodes", "20", "--save-frames", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = [c.strip() for c in next(line for line in lines if "success %" in line).strip("|").split("|")]
    row = dict(zip(header, (c.strip() for c in next(line for line in lines if "EZPoints" in line).strip("|").split("|"))))
    assert (row["policy"], row["episodes"], row["success %"], row["parse failures"]) == ("oracle", "20", "100.0", "0")
    frames = sorted(p.name for p in (tmp_path / "gym_cards_EZPoints-v0").iterdir())
    assert frames[0] == "episode00000_step000.png" and len(frames) == 5  # the reset and 4 steps


def test_evaluate_all_random(capsys):
    assert main(["evaluate", "--policy", "random", "--episodes", "5", "--seed", "3"]) == 0
    assert sum("gym_cards/" in line for line in capsys.readouterr().out.splitlines()) == 4


def test_unknown_env_is_a_clear_error():
    result = subprocess.run([sys.executable, "-m", "vlm_envs", "evaluate", "--env", "nope/Nope-v0"], capture_output=True, text=True)
    assert result.returncode == 2 and "unknown env id" in result.stderr


def test_choice_sets_are_the_modules_own(capsys):
    """Each flag offers exactly its owner's choices (a Literal and typing.get_args), in both commands and in the trainer's config."""
    import typing

    import pytest

    from vlm_envs.core import TEXT_MODES, TextMode
    from vlm_envs.evaluation.runner import VECTORIZATIONS, Vectorization
    from vlm_envs.text.parsing import PARSE_MODES, ParseMode
    from vlm_envs.text.prompts import WORDINGS, Wording
    from vlm_envs.running.wrappers import ON_PARSE_FAILURE, OnParseFailure

    owned = {"--vectorization": (VECTORIZATIONS, Vectorization), "--text-mode": (TEXT_MODES, TextMode),
             "--wording": (WORDINGS, Wording), "--parse-mode": (PARSE_MODES, ParseMode),
             "--on-parse-failure": (ON_PARSE_FAILURE, OnParseFailure)}
    for command, flags in (("evaluate", owned), ("play", ("--wording", "--on-parse-failure"))):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        usage = capsys.readouterr().out
        for flag in flags:
            choices, literal = owned[flag]
            assert choices == typing.get_args(literal) and f"{flag} {{{','.join(choices)}}}" in usage
    config = pytest.importorskip("baselines.vlm_ppo.config")
    hints = typing.get_type_hints(config.Config)
    assert (hints["parse_mode"], hints["prompt_wording"], hints["on_parse_failure"]) == (ParseMode, Wording, OnParseFailure)


def test_model_encoding_choice_sets_are_declared_once(capsys):
    """``--conv-template`` and ``--image-mode`` (the hf: policy's) offer what vlm_envs.text.prompts declares,
    and the trainer's config types its fields with the same Literals."""
    import typing

    import pytest

    from vlm_envs.text.prompts import (CONV_TEMPLATES, CONVERSATION_TEMPLATES, IMAGE_MODES, LLAVA_TEMPLATES, ConvTemplate,
                                       ImageMode)

    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    usage = capsys.readouterr().out
    assert f"--image-mode {{{','.join(IMAGE_MODES)}}}" in usage
    assert f"--conv-template {{{','.join(('auto', *CONV_TEMPLATES))}}}" in usage
    assert tuple(CONVERSATION_TEMPLATES) == LLAVA_TEMPLATES and CONV_TEMPLATES == (*LLAVA_TEMPLATES, "chat_template")
    config = pytest.importorskip("baselines.vlm_ppo.config")
    hints = typing.get_type_hints(config.Config)
    assert (hints["conv_template"], hints["image_mode"]) == (ConvTemplate, ImageMode)
