"""Command line of vlm_envs.

* ``python -m vlm_envs evaluate --manifest NAME --policy P --num-envs N --out results.json``: a result
  card for a frozen manifest (``--resume results.json`` continues a killed run)
* ``python -m vlm_envs evaluate --env ID|all --policy oracle|random --episodes N --seed S``: a quick table
* ``python -m vlm_envs play --env ID``: play in a pygame window through the model's text interface
* ``python -m vlm_envs gallery --out docs/gallery``: one PNG frame of every registered env
* ``python -m vlm_envs serve --env ID [--host 127.0.0.1] [--port 8000] [--max-sessions N] [--token-file F]``:
  serve an env through OpenEnv's protocol (docs/serving.md)
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import gymnasium as gym

import vlm_envs  # noqa: F401  (registers the ids)
from vlm_envs.core import TEXT_MODES
from vlm_envs.core.registration import CARD_ENVS
from vlm_envs.evaluation.runner import VECTORIZATIONS
from vlm_envs.text.parsing import PARSE_MODES
from vlm_envs.text.prompts import CONV_TEMPLATES, IMAGE_MODES, WORDINGS
from vlm_envs.running.wrappers import ON_PARSE_FAILURE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlm_envs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    ev = commands.add_parser("evaluate", help="play a policy on a manifest (or seeded episodes) and print a table",
                             description="Without --manifest: --env/--episodes/--seed play consecutive seeds.")
    ev.add_argument("--manifest", help="a shipped manifest (cards-v0, smoke-v0, alfworld-in-distribution-v0, "
                                       "alfworld-out-of-distribution-v0) or a manifest file")
    ev.add_argument("--policy", default="oracle", help="oracle, random, hf:PATH_OR_ID or openai:URL (default: oracle)")
    ev.add_argument("--num-envs", type=int, default=1, help="episodes played at once; results do not depend on it (default: 1)")
    ev.add_argument("--vectorization", choices=VECTORIZATIONS, default="sync", help="envs in this process or one process each")
    ev.add_argument("--out", help="write the result card (JSON) here")
    ev.add_argument("--resume", metavar="RESULTS", help="continue the killed run whose --out was RESULTS")
    ev.add_argument("--text-mode", choices=TEXT_MODES, default="prompt",
                    help="full: the state in words in the prompt, for text-only models (default: prompt)")
    ev.add_argument("--no-cot", dest="cot", action="store_false", help="the action-only prompt")
    ev.add_argument("--wording", choices=WORDINGS, default="reference", help="prompt wording (default: reference)")
    ev.add_argument("--parse-mode", choices=PARSE_MODES, default="lenient", help="(default: lenient)")
    ev.add_argument("--on-parse-failure", choices=ON_PARSE_FAILURE, default="random",
                    help="what an unparseable answer does in the card games (default: random, the paper)")
    ev.add_argument("--skip-invalid-games", action="store_true",
                    help="skip (and list on the card) manifest games that are missing or fail their sha256, "
                         "and unreadable games in an ALFWorld env's folder, with a warning naming each")
    ev.add_argument("--model", help="openai: the model name sent to the server (default: the server's first model)")
    ev.add_argument("--temperature", type=float, default=0.0, help="model policies: 0 is greedy (default: 0)")
    ev.add_argument("--max-new-tokens", type=int, default=256, help="model policies: answer length limit (default: 256)")
    ev.add_argument("--timeout", type=float, default=60.0, help="openai: seconds per request (default: 60)")
    ev.add_argument("--retries", type=int, default=3, help="openai: retries of a failed request (default: 3)")
    ev.add_argument("--device", default="cpu", help="hf: where the model runs, e.g. cuda (default: cpu)")
    ev.add_argument("--dtype", default="float32", help="hf: float32, bfloat16 or float16 (default: float32)")
    ev.add_argument("--conv-template", choices=("auto", *CONV_TEMPLATES), default="auto",
                    help="hf: auto (llava_v1 for LLaVA, else the processor's chat template), chat_template or a "
                         "LLaVA conversation template (default: auto)")
    ev.add_argument("--image-mode", choices=IMAGE_MODES, default="native",
                    help="hf: the trainer's image preprocessing (default: native)")
    ev.add_argument("--env", default=None, help="without --manifest: an env id, or 'all' for the four card games (default: all)")
    ev.add_argument("--episodes", type=int, default=100, help="without --manifest: episodes per env (default: 100)")
    ev.add_argument("--seed", type=int, default=0, help="without --manifest: episode i is reset with seed + i (default: 0)")
    ev.add_argument("--save-frames", metavar="DIR", help="save the first episode's frames of each env as PNG files in DIR")

    pl = commands.add_parser("play", help="play an env in a pygame window, typing actions as a model would")
    pl.add_argument("--env", default="gym_cards/Blackjack-v0", help="an environment id (default: gym_cards/Blackjack-v0)")
    pl.add_argument("--seed", type=int, default=0, help="episode k is reset with seed + k (default: 0)")
    pl.add_argument("--no-cot", dest="cot", action="store_false", help="show the action-only prompt")
    pl.add_argument("--wording", choices=WORDINGS, default="reference", help="prompt wording (default: reference)")
    pl.add_argument("--raw", action="store_true", help='send lines as typed (default: wrap a bare word as {"action": ...})')
    pl.add_argument("--on-parse-failure", choices=ON_PARSE_FAILURE, default="random",
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
    se.add_argument("--token-file", help="require the token in this file (its first line) on every request; "
                                         "or set VLM_ENVS_TOKEN (default: no token)")
    se.add_argument("--token", help="the token itself (visible to every local user in the process list: prefer "
                                    "--token-file or VLM_ENVS_TOKEN)")
    se.add_argument("--idle-timeout", type=float, default=600.0, help="close sessions idle this many seconds; 0: never (default: 600)")
    se.add_argument("--step-timeout", type=float, default=60.0,
                    help="a reset or step (or state) not answered within this many seconds, waiting for the env's thread "
                         "included, closes its session; 0: never (default: 60)")
    se.add_argument("--env-kwargs", default="{}", help="JSON make kwargs of the sessions' env by default (default: {})")
    se.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"),
                    help="info: one line per session opened and closed (default: warning)")
    args = parser.parse_args(argv)

    if args.command == "serve":
        return _serve(parser, args)
    if args.command == "play":
        return _play(parser, args)
    if args.command == "gallery":
        from vlm_envs.tools.gallery import make_gallery

        for path in make_gallery(args.out, args.env, args.seed, args.steps):
            print(path)
        return 0

    return _evaluate(parser, args)


def _evaluate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from pathlib import Path

    from vlm_envs.evaluation import (SetupError, Settings, check_out, evaluate, load_manifest, make_policy, markdown,
                                     seeds_manifest)

    if args.manifest is not None:
        if args.env is not None:
            parser.error("--manifest and --env exclude each other")
        try:
            manifest = load_manifest(args.manifest)
        except ValueError as err:
            parser.error(str(err))
    else:
        env_ids = list(CARD_ENVS) if args.env in (None, "all") else [args.env]
        for env_id in env_ids:
            if env_id not in gym.registry:
                parser.error(f"unknown env id {env_id!r}; registered by vlm_envs: {', '.join(CARD_ENVS)}")
            if not str(gym.spec(env_id).entry_point).startswith("vlm_envs"):
                parser.error(f"{env_id!r} is not an env of vlm_envs; its card games: {', '.join(CARD_ENVS)}")
        if args.episodes < 1:
            parser.error("--episodes must be positive")
        manifest = seeds_manifest(env_ids, args.episodes, args.seed)
    if args.num_envs < 1:
        parser.error("--num-envs must be positive")
    out = args.resume or args.out
    if args.resume and args.out and args.out != args.resume:
        parser.error("--resume RESULTS continues writing RESULTS; leave --out out or give the same path")
    try:
        check_out(out, bool(args.resume))  # before a model is loaded
    except SetupError as err:
        parser.error(str(err))
    options = {"temperature": args.temperature, "max_new_tokens": args.max_new_tokens}
    if args.policy.startswith("openai:"):
        options.update(model=args.model, timeout=args.timeout, retries=args.retries, images=args.text_mode == "prompt")
    if args.policy.startswith("hf:"):
        options.update(device=args.device, dtype=args.dtype, conv_template=args.conv_template, image_mode=args.image_mode)
    try:
        policy = make_policy(args.policy, **options) if ":" in args.policy else make_policy(args.policy)
    except (ValueError, gym.error.DependencyNotInstalled) as err:  # an unknown kind, a missing extra
        parser.error(str(err))
    first_of_env = {}
    for index, episode in enumerate(manifest.episodes):
        first_of_env.setdefault(episode.env_id, index)
    frames = {i: Path(args.save_frames) / env_id.replace("/", "_") for env_id, i in first_of_env.items()} if args.save_frames else None
    settings = Settings(text_mode=args.text_mode, cot=args.cot, wording=args.wording, parse_mode=args.parse_mode,
                        on_parse_failure=args.on_parse_failure)
    try:
        card = evaluate(manifest, policy, num_envs=args.num_envs, vectorization=args.vectorization, settings=settings,
                        out=out, resume=bool(args.resume), skip_invalid_games=args.skip_invalid_games, frames=frames,
                        progress=True)
    except SetupError as err:  # a resume of another run, a game failing its sha256
        parser.error(str(err))
    finally:
        policy.close()
    print(markdown(card))
    return 0


def _serve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from vlm_envs.remote.server import serve

    for flag, seconds in (("--idle-timeout", args.idle_timeout), ("--step-timeout", args.step_timeout)):
        if not seconds >= 0:
            parser.error(f"{flag} must be >= 0 (0: never), got {seconds:g}")
    try:
        serve(args.env, args.host, args.port, json.loads(args.env_kwargs), args.max_sessions, _server_token(args),
              args.idle_timeout or None, args.step_timeout or None, args.log_level)
    except (ValueError, TypeError, OSError) as err:  # a refused id or kwargs, a bad JSON, an unreadable token file
        parser.error(str(err))
    return 0


def _server_token(args: argparse.Namespace) -> str | None:
    """The token from --token, --token-file (its first line) or VLM_ENVS_TOKEN, in that order; None: no token."""
    if args.token is not None and args.token_file is not None:
        raise ValueError("give the token once: --token or --token-file")
    if args.token_file is not None:
        with open(args.token_file, encoding="utf-8") as file:
            token = file.readline().strip()
        if not token:
            raise ValueError(f"--token-file {args.token_file} is empty")
        return token
    token = args.token if args.token is not None else os.environ.get("VLM_ENVS_TOKEN")
    if token is not None and not token.strip():
        raise ValueError("the token is empty")
    return token


def _play(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from vlm_envs.tools.play import play

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
