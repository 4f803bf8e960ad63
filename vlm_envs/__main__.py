"""Command line: ``python -m vlm_envs evaluate --env ID|all --policy oracle|random --episodes N --seed S``."""

from __future__ import annotations

import argparse
import sys

import gymnasium as gym

import vlm_envs  # noqa: F401  (registers the ids)
from vlm_envs.evaluate import POLICIES, evaluate, format_table
from vlm_envs.registration import CARD_ENVS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlm_envs", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    ev = commands.add_parser("evaluate", help="play a scripted policy through the text interface and print a table")
    ev.add_argument("--env", default="all", help="an environment id, or 'all' for the four card games (default: all)")
    ev.add_argument("--policy", choices=POLICIES, default="oracle", help="oracle (expert) or random (default: oracle)")
    ev.add_argument("--episodes", type=int, default=100, help="episodes per environment (default: 100)")
    ev.add_argument("--seed", type=int, default=0, help="episode i is reset with seed + i (default: 0)")
    ev.add_argument("--save-frames", metavar="DIR", help="save the first episode's frames as PNG files in DIR")
    args = parser.parse_args(argv)

    env_ids = list(CARD_ENVS) if args.env == "all" else [args.env]
    for env_id in env_ids:
        if env_id not in gym.registry:
            parser.error(f"unknown env id {env_id!r}; registered by vlm_envs: {', '.join(CARD_ENVS)}")
    if args.episodes < 1:
        parser.error("--episodes must be positive")
    results = [evaluate(e, args.policy, args.episodes, args.seed, args.save_frames) for e in env_ids]
    print(format_table([r.row() for r in results]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
