"""Step latency and throughput of a served env (OpenEnv, loopback) beside in-process and Ray-pool envs.

    python benchmarks/serve_throughput.py                              # Points24, 1 and 32 envs
    python benchmarks/serve_throughput.py --env alfworld/ALFWorld-v0 --sizes 1 8 --steps 100
    python benchmarks/serve_throughput.py --modes in-process remote-png remote-raw   # no Ray

Every mode steps ``num_envs`` text-action envs (``vlm_envs.TextActions``, the trainer's setting)
with the same seeded random answers for ``--steps`` vector steps after ``--warmup``, episodes
auto-resetting in the same step. Modes:

* ``in-process``: ``gym.make_vec(..., vectorization_mode="sync")`` in this process;
* ``ray``: :func:`vlm_envs.running.ray_pool.make_ray_vec`, one actor per env, on a local Ray started here;
* ``remote-png`` / ``remote-raw``: :func:`vlm_envs.remote.make_remote_vec` against
  ``python -m vlm_envs serve`` in its own process on 127.0.0.1, images sent as PNG or as raw bytes.

Reported per vector step: p50 and p99 latency (ms), and env steps per second (vector steps x
num_envs / time). The load average is printed: compare numbers from one run on an idle machine.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

import vlm_envs

MODES = ("in-process", "ray", "remote-png", "remote-raw")
SAME_STEP = {"autoreset_mode": AutoresetMode.SAME_STEP}


def answers(envs: gym.vector.VectorEnv, infos: dict, rng: np.random.Generator, names) -> tuple[str, ...]:
    """One random answer per env: a card name in the JSON format, or an admissible ALFWorld command."""
    commands = infos.get("admissible_commands")
    if commands is not None:
        return tuple(str(rng.choice(commands[i])) for i in range(envs.num_envs))
    return tuple('{"action": "%s"}' % rng.choice(names) for _ in range(envs.num_envs))


def make(mode: str, env_id: str, n: int, url: str | None) -> gym.vector.VectorEnv:
    if mode == "in-process":
        return gym.make_vec(env_id, n, vectorization_mode="sync", vector_kwargs=SAME_STEP, wrappers=[vlm_envs.TextActions])
    if mode == "ray":
        from vlm_envs.running.ray_pool import make_ray_vec

        return make_ray_vec(env_id, n, wrappers=[vlm_envs.TextActions], vector_kwargs=SAME_STEP)
    from vlm_envs.remote import make_remote_vec

    return make_remote_vec(url, n, vector_kwargs=SAME_STEP, image_encoding=mode.removeprefix("remote-"))


def measure(mode: str, env_id: str, n: int, steps: int, warmup: int, url: str | None) -> dict:
    envs = make(mode, env_id, n, url)
    names = envs.get_attr("action_names")[0]  # once: on ray/remote each call is a round trip
    try:
        rng = np.random.default_rng(0)
        _, infos = envs.reset(seed=0)
        for _ in range(warmup):
            infos = envs.step(answers(envs, infos, rng, names))[-1]
        latencies = []
        start = time.perf_counter()
        for _ in range(steps):
            actions = answers(envs, infos, rng, names)
            t = time.perf_counter()
            infos = envs.step(actions)[-1]
            latencies.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - start
    finally:
        envs.close()
    ms = np.array(latencies) * 1e3
    return {"mode": mode, "envs": n, "p50_ms": np.percentile(ms, 50), "p99_ms": np.percentile(ms, 99),
            "steps_per_s": n * steps / elapsed}


def frame_sizes(env_id: str) -> str:
    """What one reset frame costs on the wire in each encoding (base64 included) and to encode + decode."""
    from vlm_envs.remote.codec import IMAGE_ENCODINGS, decode_image, encode_image

    image = gym.make(env_id).reset(seed=0)[0]["image"]
    parts = []
    for encoding in IMAGE_ENCODINGS:
        start = time.perf_counter()
        for _ in range(20):
            payload = encode_image(image, encoding)
            decode_image(payload)
        parts.append(f"{encoding}: {len(payload['data']) / 1024:.0f} KiB, {(time.perf_counter() - start) / 20 * 1e3:.2f} ms encode+decode")
    return f"one {image.shape[1]}x{image.shape[0]} frame: " + "; ".join(parts)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="gym_cards/Points24-v0")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 32], help="num_envs values (default: 1 32)")
    parser.add_argument("--steps", type=int, default=200, help="timed vector steps per configuration")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    args = parser.parse_args(argv)

    with contextlib.ExitStack() as stack:
        url = None
        if any(m.startswith("remote") for m in args.modes):
            from vlm_envs.remote.server import serve_in_process

            _, url = stack.enter_context(serve_in_process(args.env, "--max-sessions", str(max(args.sizes))))
        rows = [measure(mode, args.env, n, args.steps, args.warmup, url) for n in args.sizes for mode in args.modes]
    print(f"{args.env}, {args.steps} vector steps per row, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(frame_sizes(args.env))
    print(f"| {'mode':<11} | {'envs':>4} | {'p50 ms':>8} | {'p99 ms':>8} | {'env steps/s':>11} |")
    print(f"|{'-' * 13}|{'-' * 6}|{'-' * 10}|{'-' * 10}|{'-' * 13}|")
    for r in rows:
        print(f"| {r['mode']:<11} | {r['envs']:>4} | {r['p50_ms']:>8.2f} | {r['p99_ms']:>8.2f} | {r['steps_per_s']:>11.0f} |")
    return rows


if __name__ == "__main__":
    main()
