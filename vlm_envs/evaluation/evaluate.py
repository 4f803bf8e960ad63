"""Evaluate a policy on a manifest and write a result card; resume a run that was killed.

While it runs, each finished episode is appended to ``<out>.partial.jsonl`` (a header line, then
one record per line, flushed at once), so a killed run loses at most the episodes that were
being played. ``resume=True`` reads that journal (or a finished card at ``out``), checks it
belongs to the same manifest, policy and settings, and plays only the missing episodes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from vlm_envs.evaluation.card import build_card
from vlm_envs.evaluation.manifests import Manifest, load_manifest
from vlm_envs.evaluation.policies import Policy
from vlm_envs.evaluation.registry import make_policy
from vlm_envs.evaluation.runner import SetupError, Settings, Vectorization, check_games, play


def journal_path(out: str | Path) -> Path:
    return Path(f"{out}.partial.jsonl")


def _identity(manifest: Manifest, policy: dict[str, Any], settings: Settings) -> dict[str, Any]:
    manifest_id = {"name": manifest.name, "sha256": manifest.sha256, "episodes": len(manifest.episodes)}
    return {"manifest": manifest_id, "policy": policy, "settings": settings.to_dict()}


def _check_same_run(found: dict[str, Any], expected: dict[str, Any], source: Path) -> None:
    for key, value in expected.items():
        if json.loads(json.dumps(found.get(key))) != json.loads(json.dumps(value)):
            raise SetupError(f"cannot resume from {source}: its {key} is {found.get(key)!r}, this run's is {value!r}")


def load_done(out: Path, identity: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The records already written for this run: a card at ``out`` and/or its journal."""
    done: dict[int, dict[str, Any]] = {}
    if out.exists():
        card = json.loads(out.read_text())
        _check_same_run(card, identity, out)
        done.update({r["index"]: r for r in card["episodes"]})
    journal = journal_path(out)
    header, records = _read_journal(journal)
    if header is not None:
        _check_same_run(header, identity, journal)
        done.update({record["index"]: record for record in records})
    return done


def check_out(out: str | Path | None, resume: bool) -> None:
    """Refuse, before anything is loaded, a resume with nowhere to resume from, or a new run that
    would overwrite the journal of an unfinished one."""
    if resume and out is None:
        raise SetupError("resume needs the path of the results (out=...)")
    if out is not None and not resume and _read_journal(journal_path(out))[1]:
        raise SetupError(f"{journal_path(out)} holds the episodes of an unfinished run: pass resume=True "
                         "(--resume) to continue it, or delete the file to start over")


def _read_journal(journal: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The journal's header and complete records (``None, []`` when there is none yet)."""
    if not journal.exists():
        return None, []
    lines = journal.read_text().split("\n")
    try:
        header = json.loads(lines[0])
    except ValueError:
        return None, []  # killed before the header was complete: nothing was recorded
    records = []
    for line in lines[1:]:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # the line being written when the run was killed
    return header, records


class _Journal:
    def __init__(self, path: Path, identity: dict[str, Any], done: dict[int, dict[str, Any]]):
        # The records kept so far are rewritten beside the journal and renamed over it, so a kill
        # at any moment leaves either the old journal or the new one, never a partial copy.
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            f.writelines(json.dumps(record) + "\n" for record in [identity, *(done[i] for i in sorted(done))])
        os.replace(tmp, path)
        self.file = open(path, "a")

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def evaluate(
    manifest: Manifest | str,
    policy: Policy | str,
    *,
    num_envs: int = 1,
    vectorization: Vectorization = "sync",
    settings: Settings = Settings(),
    out: str | Path | None = None,
    resume: bool = False,
    games_root: str | Path | None = None,
    skip_invalid_games: bool = False,
    frames: dict[int, Path] | None = None,
    progress: bool = False,
    schedule_seed: int | None = None,
) -> dict[str, Any]:
    """Play every episode of ``manifest`` with ``policy`` and return the result card (written to ``out``).

    Args:
        manifest: a :class:`Manifest`, a shipped manifest's name or a path.
        policy: a policy object or a spec for :func:`vlm_envs.evaluation.make_policy`.
        num_envs: episodes played at the same time (results do not depend on it).
        vectorization: ``"sync"`` (in this process) or ``"async"`` (one process per env).
        settings: text mode, prompt, parser and parse-failure rule (recorded on the card).
        out: where the card goes (JSON); the journal ``<out>.partial.jsonl`` lives beside it while running.
        resume: continue from ``out`` / its journal instead of starting over.
        games_root: where ALFWorld manifests' game paths are rooted (default: the shipped games).
        skip_invalid_games: skip episodes whose game is missing or fails its sha256 check, and
            unreadable games in an ALFWorld env's folder, with a warning naming each, and list them
            on the card (``skipped``, ``skipped_games``; default: raise).
        frames: ``{index: folder}``: save those episodes' images as PNG files.
        schedule_seed: shuffle the order of env work in ``sync`` mode (tests of order independence).
    """
    manifest = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    out = None if out is None else Path(out)
    check_out(out, resume)
    if games_root is None and any(e.game for e in manifest.episodes):
        from vlm_envs.alfworld_wrap import shipped_games_dir

        games_root = shipped_games_dir()
    skipped = check_games(manifest, games_root, skip_invalid_games)  # before a model is loaded
    owned = isinstance(policy, str)  # made here, so closed here
    policy = make_policy(policy) if owned else policy
    journal = None
    try:
        description = policy.describe()
        identity = _identity(manifest, description, settings)
        done = load_done(out, identity) if resume else {}
        todo = [i for i in range(len(manifest.episodes)) if i not in done and i not in skipped]
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            journal = _Journal(journal_path(out), identity, done)
        counter = _Progress(len(manifest.episodes), len(done) + len(skipped), manifest.name) if progress else None

        def on_record(record: dict[str, Any]) -> None:
            if journal is not None:
                journal.write(record)
            if counter is not None:
                counter.advance()

        start = time.perf_counter()
        skipped_games: set[str] = set()
        played = play(manifest, policy, indices=todo, num_envs=num_envs, vectorization=vectorization, settings=settings,
                      games_root=games_root, on_record=on_record, frames=frames, schedule_seed=schedule_seed,
                      skip_invalid_games=skip_invalid_games, skipped_games=skipped_games)
    finally:
        if journal is not None:
            journal.close()
        if owned:
            policy.close()
    card = build_card(manifest, description, settings.to_dict(), {**done, **played}, skipped, sorted(skipped_games),
                      seconds=round(time.perf_counter() - start, 3))
    if out is not None:
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(card, indent=1) + "\n")
        os.replace(tmp, out)
        journal_path(out).unlink(missing_ok=True)
    return card


class _Progress:
    """``label [#####.....] done/total`` on stderr."""

    def __init__(self, total: int, done: int, label: str, width: int = 30):
        self.total, self.done, self.label, self.width = total, done, label, width

    def advance(self) -> None:
        self.done += 1
        filled = self.width * self.done // self.total
        sys.stderr.write(f"\r{self.label:<28} [{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total}")
        if self.done == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()
