"""Soak the env server with careless and hostile clients beside well-behaved ones, on loopback.

    python benchmarks/serve_soak.py                          # 32 sessions for 2 minutes, Points24
    python benchmarks/serve_soak.py --sessions 4 --seconds 5 # the short version CI runs

The server is ``python -m vlm_envs serve`` in its own process on 127.0.0.1, with ``--max-sessions``
equal to ``--sessions`` (as the docs recommend for a trainer). Each of ``--sessions`` client
threads opens connection after connection until the time is up; each connection is one of, by
a seeded draw:

* **played** (most): seeded episodes of valid text actions, with malformed messages, oversized
  texts and refused make kwargs sent between the steps; every one of those must be answered with
  an error and the episode must go on. Every answer of every valid message is checked against a
  local ``TextActions(gym.make(env))`` fed the same seeds and actions (pixels, text, reward,
  flags, info);
* **cut off**: a reset and a few steps, then the TCP connection is dropped without a close
  (sometimes with a step unanswered);
* **oversized frame**: a WebSocket frame over the 4 MiB limit, which closes that connection.

A well-behaved connection that ends in any other way than its own close is **lost** (expected:
none). A client the server refuses as full (a cut-off session's slot not yet freed) retries.
Printed: connections of each kind, steps served, errors answered (and sent), well-behaved
connections lost, episodes equal to the local env's, refusals, the server's RSS at start and end,
p50/p99 latency of the valid steps and resets, and the server log's tracebacks.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
from gymnasium.utils.env_checker import data_equivalence

import vlm_envs
from vlm_envs.remote.codec import decode_image, decode_value
from vlm_envs.remote.server import MAX_MESSAGE_BYTES, MAX_TEXT_CHARS, serve_in_process
from websockets.sync.client import connect

MALFORMED = (
    "[]", "5", "null", "{not json", "[" * 50_000 + "]" * 50_000, b"\x00binary", '{"type": "dance"}', '{"type": "mcp", "data": {}}',
    '{"type": "reset", "data": {"text_actions": {"format_penalty": NaN}}}', '{"type": "step", "data": {"index": -1}}',
    '{"type": "step", "data": {"text": "8", "index": 1}}', '{"type": "step", "data": {"text": "8"}, "session_id": "x"}',
)
OVERSIZED_TEXT = json.dumps({"type": "step", "data": {"text": "x" * (MAX_TEXT_CHARS + 1)}})
BAD_KWARGS = ({"card_art": "/etc"}, {"command": "rm -rf /"}, {"image_size": [40000, 40000]}, {"image_size": "huge"},
              {"render_mode": "human"}, {"game_dir": "/"}, "not an object")
KINDS = ("played", "cut off", "oversized frame")
KIND_WEIGHTS = (0.85, 0.12, 0.03)


class Stats:
    """Counts and latencies of one client thread (merged at the end)."""

    def __init__(self):
        self.connections = dict.fromkeys(KINDS, 0)
        self.steps = self.errors_sent = self.errors_answered = self.lost = self.refused = 0
        self.episodes = self.episodes_equal = 0
        self.latencies: list[float] = []
        self.problems: list[str] = []

    def merge(self, other: Stats) -> None:
        for kind in KINDS:
            self.connections[kind] += other.connections[kind]
        for name in ("steps", "errors_sent", "errors_answered", "lost", "refused", "episodes", "episodes_equal"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.latencies += other.latencies
        self.problems += other.problems


class Unexpected(Exception):
    """The server answered what a well-behaved client did not expect."""


class Client:
    """One client thread: connections one after another until the deadline."""

    def __init__(self, url: str, env_id: str, index: int, deadline: float):
        self.url, self.env_id, self.index, self.deadline = url.replace("http://", "ws://") + "/ws", env_id, index, deadline
        self.rng = np.random.default_rng(index)
        self.local = vlm_envs.TextActions(gym.make(env_id))
        self.names = self.local.unwrapped.action_names
        self.stats = Stats()
        self.episode = 0

    def run(self) -> None:
        while time.monotonic() < self.deadline:
            kind = KINDS[int(self.rng.choice(len(KINDS), p=KIND_WEIGHTS))]
            with connect(self.url, max_size=None, open_timeout=30) as ws:
                if not self.admitted(ws):
                    time.sleep(0.05)
                    continue
                self.stats.connections[kind] += 1
                try:
                    if kind == "played":
                        self.play(ws)
                    elif kind == "cut off":
                        self.cut_off(ws)
                    else:
                        self.oversize(ws)
                except Exception as err:  # noqa: BLE001  (counted and reported, never hidden)
                    if kind == "played":
                        self.stats.lost += 1
                        self.stats.problems.append(f"client {self.index}: {type(err).__name__}: {err}"[:300])

    def admitted(self, ws) -> bool:
        """Whether the server opened a session; a full one refuses (a cut-off session's slot not yet free) and closes."""
        try:
            first = self.ask(ws, {"type": "state"})
        except Exception:  # noqa: BLE001  (the refusal and the close can overtake the question)
            first = {"type": "error", "data": {"code": "CAPACITY_REACHED"}}
        refused = first["type"] == "error" and first["data"]["code"] == "CAPACITY_REACHED"
        self.stats.refused += refused
        return not refused

    def ask(self, ws, message, timed: bool = False) -> dict:
        start = time.perf_counter()
        ws.send(message if isinstance(message, (str, bytes)) else json.dumps(message))
        answer = json.loads(ws.recv(timeout=120))
        if timed:
            self.stats.latencies.append(time.perf_counter() - start)
        return answer

    def hostile(self, ws) -> None:
        """One malformed message, oversized text or refused configuration: it must get an error answer."""
        roll = self.rng.random()
        if roll < 0.6:
            message = MALFORMED[int(self.rng.integers(len(MALFORMED)))]
        elif roll < 0.75:
            message = OVERSIZED_TEXT
        else:
            message = {"type": "reset", "data": {"env_kwargs": BAD_KWARGS[int(self.rng.integers(len(BAD_KWARGS)))]}}
        self.stats.errors_sent += 1
        answer = self.ask(ws, message)
        if answer["type"] != "error":
            raise Unexpected(f"{str(message)[:60]!r} was answered with {answer['type']}")
        self.stats.errors_answered += 1

    def play(self, ws) -> None:
        """A few seeded episodes, each answer compared with the local env's; hostile messages between."""
        for _ in range(int(self.rng.integers(1, 4))):
            seed = self.index * 1_000_000 + self.episode
            self.episode += 1
            equal = self.check(self.ask(ws, {"type": "reset", "data": {"seed": seed}}, timed=True), self.local.reset(seed=seed))
            done = False
            while not done and time.monotonic() < self.deadline:
                if self.rng.random() < 0.15:
                    self.hostile(ws)
                text = '{"action": "%s"}' % self.names[int(self.rng.integers(len(self.names)))] if self.rng.random() < 0.9 else "no idea"
                expected = self.local.step(text)
                equal &= self.check(self.ask(ws, {"type": "step", "data": {"text": text}}, timed=True), expected)
                self.stats.steps += 1
                done = expected[2] or expected[3]
            self.stats.episodes += 1
            self.stats.episodes_equal += int(equal)
            if time.monotonic() >= self.deadline:
                break
        self.ask(ws, {"type": "state"})  # still serving
        ws.send(json.dumps({"type": "close"}))

    def check(self, answer: dict, expected: tuple) -> bool:
        if answer["type"] != "observation":
            raise Unexpected(f"a valid message was answered with {answer}"[:300])
        data, observation = answer["data"], answer["data"]["observation"]
        obs = {"image": decode_image(observation["image"]), "text": observation["text"]}
        got = (obs, data["reward"], observation["terminated"], observation["truncated"], decode_value(observation["info"]))
        if len(expected) == 2:  # a reset: (obs, info)
            got = (obs, got[4])
        else:
            got = (obs, data["reward"] if data["reward"] is not None else 0.0, *got[2:])
        return data_equivalence(got, expected, exact=True)

    def cut_off(self, ws) -> None:
        """A reset and a few steps, then the TCP connection is dropped without a WebSocket close."""
        self.ask(ws, {"type": "reset", "data": {"seed": int(self.rng.integers(1 << 30))}})
        for _ in range(int(self.rng.integers(0, 4))):
            self.ask(ws, {"type": "step", "data": {"text": '{"action": "%s"}' % self.names[0]}})
        if self.rng.random() < 0.5:
            ws.send(json.dumps({"type": "step", "data": {"text": "unanswered"}}))
        ws.socket.shutdown(socket.SHUT_RDWR)

    def oversize(self, ws) -> None:
        """A frame over the server's limit: the server closes this connection (1009)."""
        ws.send(json.dumps({"type": "step", "data": {"text": "x" * MAX_MESSAGE_BYTES}}))
        try:
            ws.recv(timeout=30)
        except Exception:  # noqa: BLE001  (the expected close)
            return


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="gym_cards/Points24-v0")
    parser.add_argument("--sessions", type=int, default=32, help="client threads, and the server's --max-sessions (default: 32)")
    parser.add_argument("--seconds", type=float, default=120.0, help="how long the clients play (default: 120)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        with serve_in_process(args.env, "--max-sessions", str(args.sessions), log=log) as (proc, url):
            rss_start = rss_mib(proc.pid)
            start = time.monotonic()
            clients = [Client(url, args.env, i, start + args.seconds) for i in range(args.sessions)]
            threads = [threading.Thread(target=client.run, name=f"soak-{i}") for i, client in enumerate(clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.monotonic() - start
            rss_end = rss_mib(proc.pid)
        server_log = log.read_text()
    stats = Stats()
    for client in clients:
        stats.merge(client.stats)
    ms = np.array(stats.latencies or [np.nan]) * 1e3
    summary = {
        "connections": stats.connections, "steps": stats.steps, "errors_sent": stats.errors_sent,
        "errors_answered": stats.errors_answered, "lost": stats.lost, "episodes": stats.episodes,
        "episodes_equal": stats.episodes_equal, "refused": stats.refused, "rss_start_mib": rss_start, "rss_end_mib": rss_end,
        "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
        "tracebacks": server_log.count("Traceback"), "problems": stats.problems[:10],
    }
    print(f"{args.env}: {args.sessions} client threads for {elapsed:.0f} s on 127.0.0.1, --max-sessions {args.sessions}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    rows = [
        ("connections: played / cut off / oversized frame", " / ".join(str(stats.connections[k]) for k in KINDS)),
        ("steps served", f"{stats.steps:,}"),
        ("errors answered / hostile messages sent", f"{stats.errors_answered:,} / {stats.errors_sent:,}"),
        ("well-behaved connections lost", f"{stats.lost}"),
        ("episodes equal to the local env's", f"{stats.episodes_equal:,} / {stats.episodes:,}"),
        ("refused while full (retried)", f"{stats.refused:,}"),
        ("server RSS start / end (MiB)", f"{rss_start:.0f} / {rss_end:.0f}"),
        ("p50 / p99 reset+step latency (ms)", f"{summary['p50_ms']:.1f} / {summary['p99_ms']:.1f}"),
        ("tracebacks in the server log", f"{summary['tracebacks']}"),
    ]
    print(f"| {'':<48} | {'value':>15} |\n|{'-' * 50}|{'-' * 17}|")
    for name, value in rows:
        print(f"| {name:<48} | {value:>15} |")
    for problem in stats.problems[:10]:
        print("problem:", problem)
    return summary


if __name__ == "__main__":
    main()
