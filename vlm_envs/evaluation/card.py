"""The result card: one JSON document that says what was evaluated, how, and what came out.

Top-level keys:

* ``manifest``: ``name``, ``sha256`` (of the manifest file), ``episodes`` (how many it lists);
* ``policy``: the policy's own description (name, model, decoding settings);
* ``settings``: how the episodes were played (text mode, prompt wording, parser, failure rule);
* ``versions``: vlm_envs, python, gymnasium, alfworld (``null`` when not installed);
* ``complete``: every manifest episode has a record (or was skipped as an invalid game);
* ``skipped``: ``[{"index", "reason"}]`` of episodes whose game failed its sha256 check;
* ``skipped_games``: unreadable games an ALFWorld env skipped in its folder (``skip_invalid_games``);
* ``episodes``: one record per played episode, in manifest order: ``index``, ``env_id``, ``seed``,
  ``return``, ``length``, ``optimal_actions`` (how many of its ``length`` steps the env's oracle
  labels called optimal, :mod:`vlm_envs.core.labels`), ``success``, ``terminated``, ``truncated``,
  ``parse_failures``, ``parse_failure_reasons`` (reason -> count), ``final_info``; ALFWorld adds
  ``game`` and ``task_type``;
* ``summary``: ``per_env`` and ``per_task_type`` (ALFWorld), each with ``episodes``, ``successes``,
  ``success_rate``, ``wilson_95`` (``[low, high]``), ``mean_return``, ``mean_length``,
  ``parse_failures``, and over the group's steps ``optimal_actions``, ``optimal_action_fraction``
  and its ``optimal_action_wilson_95`` (which treats steps as independent; steps of one episode
  are correlated, so for a model policy the true interval is somewhat wider). These three are ``null`` when a record of the group has no
  ``optimal_actions``: records from a journal written before the labels existed, which
  ``--resume`` still continues (their other fields are unchanged).
"""

from __future__ import annotations

import math
import platform
from collections import defaultdict
from importlib import metadata
from typing import Any, Iterable

import gymnasium

from vlm_envs._version import __version__

CARD_FORMAT = "vlm_envs.result_card/1"
Z_95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a success rate (95% by default); ``(0, 1)`` for ``n == 0``."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denominator = 1 + z * z / n
    low = 0.0 if successes == 0 else (centre - spread) / denominator  # exact ends despite round-off
    high = 1.0 if successes == n else (centre + spread) / denominator
    return low, high


def versions() -> dict[str, str | None]:
    def installed(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {"vlm_envs": __version__, "python": platform.python_version(),
            "gymnasium": gymnasium.__version__, "alfworld": installed("alfworld")}


def _group_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(records)
    successes = sum(r["success"] for r in records)
    low, high = wilson_interval(successes, n)
    steps = sum(r["length"] for r in records)
    return {
        "episodes": n, "successes": successes, "success_rate": successes / n, "wilson_95": [low, high],
        "mean_return": sum(r["return"] for r in records) / n, "mean_length": steps / n,
        "parse_failures": sum(r["parse_failures"] for r in records), **_optimal_action_summary(records, steps),
    }


def _optimal_action_summary(records: list[dict[str, Any]], steps: int) -> dict[str, Any]:
    """The fraction of the group's steps whose action was optimal, with its Wilson interval over steps;
    ``None`` for each when a record has no count (an older journal) or there are no steps."""
    if steps == 0 or any("optimal_actions" not in r for r in records):
        return {"optimal_actions": None, "optimal_action_fraction": None, "optimal_action_wilson_95": None}
    optimal = sum(r["optimal_actions"] for r in records)
    return {"optimal_actions": optimal, "optimal_action_fraction": optimal / steps,
            "optimal_action_wilson_95": list(wilson_interval(optimal, steps))}


def summarize(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    by_env: dict[str, list] = defaultdict(list)
    by_task: dict[str, list] = defaultdict(list)
    for record in records:
        by_env[record["env_id"]].append(record)
        if "task_type" in record:
            by_task[record["task_type"]].append(record)
    return {"per_env": {k: _group_summary(v) for k, v in by_env.items()},
            "per_task_type": {k: _group_summary(v) for k, v in sorted(by_task.items())}}


def build_card(manifest, policy: dict[str, Any], settings: dict[str, Any], records: dict[int, dict[str, Any]],
               skipped: dict[int, str], skipped_games: list[str] = (), seconds: float | None = None) -> dict[str, Any]:
    episodes = [records[i] for i in sorted(records)]
    return {
        "format": CARD_FORMAT,
        "manifest": {"name": manifest.name, "sha256": manifest.sha256, "episodes": len(manifest.episodes)},
        "policy": policy,
        "settings": settings,
        "versions": versions(),
        "complete": len(records) + len(skipped) == len(manifest.episodes),
        "skipped": [{"index": i, "reason": r} for i, r in sorted(skipped.items())],
        "skipped_games": list(skipped_games),
        "seconds": seconds,
        "episodes": episodes,
        "summary": summarize(episodes),
    }


TABLE_HEADER = ["env / task type", "policy", "episodes", "success %", "95% CI", "mean return", "mean length", "optimal %",
                "parse failures"]


def table_rows(card: dict[str, Any]) -> list[list[str]]:
    policy = card["policy"].get("model") or card["policy"]["name"]
    rows = []
    groups = [*card["summary"]["per_env"].items(), *card["summary"]["per_task_type"].items()]
    for name, s in groups:
        low, high = s["wilson_95"]
        optimal = s.get("optimal_action_fraction")  # absent on cards written before the labels
        rows.append([name, str(policy), str(s["episodes"]), f"{100 * s['success_rate']:.1f}",
                     f"{100 * low:.1f}-{100 * high:.1f}", f"{s['mean_return']:.3f}", f"{s['mean_length']:.2f}",
                     "-" if optimal is None else f"{100 * optimal:.1f}", str(s["parse_failures"])])
    return rows


def format_table(rows: list[list[str]], header: list[str] = TABLE_HEADER) -> str:
    """A Markdown table."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def markdown(card: dict[str, Any]) -> str:
    """The card's summary as a Markdown table, under a line naming the manifest and its hash."""
    m = card["manifest"]
    head = f"manifest {m['name']} (sha256 {m['sha256'][:12]}), {len(card['episodes'])}/{m['episodes']} episodes"
    if card["skipped"]:
        head += f", {len(card['skipped'])} skipped (invalid game)"
    if card["skipped_games"]:
        head += f", {len(card['skipped_games'])} unreadable games skipped in the game folders"
    return head + "\n\n" + format_table(table_rows(card))
