"""Steps per second of sync, async and Ray vector envs with 1, 2, 4 and 8 sub-envs.

    python benchmarks/vector_throughput.py                                   # card env + ALFWorld if installed
    python benchmarks/vector_throughput.py --env gym_cards/Points24-v0 --sizes 1 2 4 8 --seconds 5 --csv out.csv

Each configuration is built, warmed up (``--warmup`` vector steps, which also starts Ray's
actors), then stepped for ``--seconds`` with random actions (card games: random ``Discrete``
indices; ALFWorld: a random admissible command), episodes auto-resetting. Reported: env steps
per second (vector steps x num_envs) and the build time. Ray runs on a local instance started
here with ``--ray-cpus`` CPUs on the loopback address, either one actor per sub-env (``ray``) or
one actor per Ray CPU holding several sub-envs (``ray-packed``, ``envs_per_actor``). The machine's load average is printed:
these numbers are only comparable on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time

import gymnasium as gym
import numpy as np

import vlm_envs  # noqa: F401  (registers the ids)

MODES = ("sync", "async", "ray", "ray-packed")


def make(env_id: str, mode: str, n: int, ray_cpus: int = 2) -> gym.vector.VectorEnv:
    """``ray``: one actor per sub-env; ``ray-packed``: one actor per Ray CPU, the envs split between them."""
    if mode.startswith("ray"):
        from vlm_envs.running.ray_pool import make_ray_vec

        per_actor = -(-n // ray_cpus) if mode == "ray-packed" else 1
        return make_ray_vec(env_id, n, vector_kwargs={"envs_per_actor": per_actor})
    return gym.make_vec(env_id, n, vectorization_mode=mode)


def random_actions(envs: gym.vector.VectorEnv, infos: dict, rng: np.random.Generator):
    """Random Discrete indices, or one random admissible command per sub-env for text-action envs."""
    if isinstance(envs.single_action_space, gym.spaces.Discrete):
        return rng.integers(envs.single_action_space.n, size=envs.num_envs)
    commands = infos.get("admissible_commands")
    return tuple(
        str(rng.choice(commands[i])) if commands is not None and len(commands[i]) else "look"
        for i in range(envs.num_envs)
    )


def measure(env_id: str, mode: str, n: int, seconds: float, warmup: int, seed: int = 0, ray_cpus: int = 2) -> dict:
    start = time.perf_counter()
    envs = make(env_id, mode, n, ray_cpus)
    _, infos = envs.reset(seed=seed)
    build = time.perf_counter() - start
    rng = np.random.default_rng(seed)
    for _ in range(warmup):
        _, _, _, _, infos = envs.step(random_actions(envs, infos, rng))
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        _, _, _, _, infos = envs.step(random_actions(envs, infos, rng))
        steps += 1
    elapsed = time.perf_counter() - start
    envs.close()
    return {"env": env_id, "mode": mode, "num_envs": n, "steps_per_s": steps * n / elapsed, "build_s": build}


def default_envs() -> list[str]:
    ids = ["gym_cards/Points24-v0"]
    if "alfworld/ALFWorld-v0" in gym.registry:
        import importlib.util

        if importlib.util.find_spec("alfworld") is not None:
            ids.append("alfworld/ALFWorld-v0")
    return ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", action="append", help="env id (repeatable; default: Points24 and ALFWorld if available)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--sizes", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--seconds", type=float, default=3.0, help="timed stepping per configuration")
    parser.add_argument("--warmup", type=int, default=5, help="untimed vector steps first")
    parser.add_argument("--ray-cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray instance")
    parser.add_argument("--csv", help="also write the rows to this CSV file")
    args = parser.parse_args(argv)

    env_ids = args.env or default_envs()
    uses_ray = any(m.startswith("ray") for m in args.modes)
    if uses_ray:
        try:
            import ray
        except ImportError:
            sys.exit('ray is not installed: pip install "vlm-envs[ray]" (or leave it out with --modes sync async)')
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=args.ray_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False, configure_logging=False)
    print(f"cpus: {os.cpu_count()}, load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    rows = []
    for env_id in env_ids:
        for n in args.sizes:
            for mode in args.modes:
                row = measure(env_id, mode, n, args.seconds, args.warmup, ray_cpus=args.ray_cpus)
                rows.append(row)
                print(f"{env_id:<26} {mode:<6} n={n:<3} {row['steps_per_s']:9.1f} steps/s  (build {row['build_s']:.1f} s)",
                      flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    for env_id in env_ids:
        print(f"{env_id} (env steps/s)\n")
        print("| num_envs | " + " | ".join(args.modes) + " |")
        print("|---|" + "---|" * len(args.modes))
        for n in args.sizes:
            cells = [next(r for r in rows if r["env"] == env_id and r["mode"] == m and r["num_envs"] == n) for m in args.modes]
            print(f"| {n} | " + " | ".join(f"{c['steps_per_s']:.0f}" for c in cells) + " |")
        print()
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    if uses_ray:
        import ray

        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
