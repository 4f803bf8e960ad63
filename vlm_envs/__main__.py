"""Command line of vlm_envs.

* ``python -m vlm_envs evaluate --env ID|all --policy oracle|random --episodes N --seed S``
* ``python -m vlm_envs play --env ID``: play in a pygame window through the model's text interface
* ``python -m vlm_envs gallery --out docs/gallery``: one PNG frame of every registered env
* ``python -m vlm_envs serve --env ID [--host 127.0.0.1] [--port 8000] [--max-sessions N] [--token T]``:
  serve an env through OpenEnv (docs/serving.md)
"""

from __future__ import annotations

import argparse
import json
import sys

import gymnasium as gym

import vlm_envs  # noqa: F401  (registers the ids)
from vlm_envs.evaluate import POLICIES, evaluate, format_table
from vlm_envs.registration import CARD_ENVS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlm_envs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    ev = commands.add_parser("evaluate", help="play a scripted policy through the text interface and print a table")
    ev.add_argument("--env", default="all", help="an environment id, or 'all' for the four card games (default: all)")
    ev.add_argument("--policy", choices=POLICIES, default="oracle", help="oracle (expert) or random (default: oracle)")
    ev.add_argument("--episodes", type=int, default=100, help="episodes per environment (default: 100)")
    ev.add_argument("--seed", type=int, default=0, help="episode i is reset with seed + i (default: 0)")
    ev.add_argument("--save-frames", metavar="DIR", help="save the first episode's frames as PNG files in DIR")

    pl = commands.add_parser("play", help="play an env in a pygame window, typing actions as a model would")
    pl.add_argument("--env", default="gym_cards/Blackjack-v0", help="an environment id (default: gym_cards/Blackjack-v0)")
    pl.add_argument("--seed", type=int, default=0, help="episode k is reset with seed + k (default: 0)")
    pl.add_argument("--no-cot", dest="cot", action="store_false", help="show the action-only prompt")
    pl.add_argument("--wording", choices=("reference", "clean"), default="reference", help="prompt wording (default: reference)")
    pl.add_argument("--raw", action="store_true", help='send lines as typed (default: wrap a bare word as {"action": ...})')
    pl.add_argument("--on-parse-failure", choices=("random", "penalty", "noop"), default="random",
                    help="card games: what an unparseable line does, as vlm_envs.TextActions (default: random, "
                         "the paper); ALFWorld applies its own rule to inadmissible commands")
    pl.add_argument("--type", dest="script", action="append", default=[], metavar="LINE",
                    help="type LINE before the keyboard (repeatable; scripted demos and headless tests)")
    pl.add_argument("--exit-after-script", action="store_true", help="quit once the --type lines are played")
    pl.add_argument("--screenshot", metavar="PNG", help="save the window to PNG when quitting")

    ga = commands.add_parser("gallery", help="save one PNG frame of every registered env (and index.md)")
    ga.add_argument("--out", default="docs/gallery", help="output folder (default: docs/gallery)")
    ga.add_argument("--env", action="append", help="only these ids (repeatable; default: every registered id)")
    ga.add_argument("--seed", type=int, default=0, help="reset seed (default: 0)")
    ga.add_argument("--steps", type=int, default=1, help="oracle moves before the frame is taken (default: 1)")

    se = commands.add_parser("serve", help="serve an env through OpenEnv, one env per session (the serve extra)")
    se.add_argument("--env", required=True, help="an id registered by vlm_envs")
    se.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    se.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    se.add_argument("--max-sessions", type=int, default=8, help="concurrent sessions; more are refused (default: 8)")
    se.add_argument("--token", help="require 'Authorization: Bearer TOKEN' on every request (default: none)")
    se.add_argument("--idle-timeout", type=float, default=600.0, help="close sessions idle this many seconds (default: 600)")
    se.add_argument("--env-kwargs", default="{}", help="JSON make kwargs of the sessions' env by default (default: {})")
    args = parser.parse_args(argv)

    if args.command == "serve":
        return _serve(parser, args)
    if args.command == "play":
        return _play(parser, args)
    if args.command == "gallery":
        from vlm_envs.gallery import make_gallery

        for path in make_gallery(args.out, args.env, args.seed, args.steps):
            print(path)
        return 0

    env_ids = list(CARD_ENVS) if args.env == "all" else [args.env]
    for env_id in env_ids:
        if env_id not in gym.registry:
            parser.error(f"unknown env id {env_id!r}; registered by vlm_envs: {', '.join(CARD_ENVS)}")
    if args.episodes < 1:
        parser.error("--episodes must be positive")
    results = [evaluate(e, args.policy, args.episodes, args.seed, args.save_frames) for e in env_ids]
    print(format_table([r.row() for r in results]))
    return 0


def _serve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from vlm_envs.remote.server import serve

    try:
        serve(args.env, args.host, args.port, json.loads(args.env_kwargs), args.max_sessions, args.token, args.idle_timeout)
    except (ValueError, TypeError) as err:  # a refused id or kwargs, a bad JSON: a usage error, not a traceback
        parser.error(str(err))
    return 0


def _play(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from vlm_envs.play import play

    if args.env not in gym.registry:
        parser.error(f"unknown env id {args.env!r}")
    state = play(args.env, screenshot=args.screenshot, seed=args.seed, cot=args.cot, wording=args.wording, raw=args.raw,
                 on_parse_failure=args.on_parse_failure, script=args.script, exit_after_script=args.exit_after_script)
    for step in state.history:
        print(f"episode {step['episode']}: sent {step['sent']!r} -> parse_ok={step['parse_ok']} action={step['action']!r} "
              f"reward={step['reward']:+g}{' done' if step['terminated'] or step['truncated'] else ''}"
              f"{' success' if step['success'] else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
