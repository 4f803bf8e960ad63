"""CPU-scale PPO experiments on the embedded model (and, ``*-smollm2``, the pretrained SmolLM2 VLM):
SFT start -> PPO -> held-out greedy success.

``python benchmarks/experiments.py run NAME [--seeds S ...]`` runs one experiment (the
``demo`` pipeline: SFT data from the env's oracle with the env's weak-start recipe, SFT, PPO)
once per seed, one after another, and writes ``docs/experiments/NAME/{metrics.csv,curve.png,
config.json}`` for the first seed and ``docs/experiments/NAME/seed_S/`` for every further seed
(ALFWorld also ``also_evaluated.json``: the SFT start and the final model on the
out-of-distribution games; its ``metrics.csv`` evaluates on the in-distribution ones).
``python benchmarks/experiments.py summary [NAME ...]`` prints (and, for all, writes
``docs/experiments/summary.md``), from the committed folders, the
start (``update = -1``, the SFT model), the best and the final greedy success with Wilson 95%
intervals, whether each run is stable, and the CoT ablation pairs over seeds (mean, min-max).

Every number is greedy success on held-out seeds (below ``2**31``; training plays seeds at or
above it). NumberLine's is exact over all 30 start states (``eval/greedy_start_success``).
Budgets are fixed update counts, not wall time, so a loaded machine makes a run slower, never
different; each fits in 40 minutes on an idle 2-core CPU (the ``*-smollm2`` ones in 60).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from vlm_envs.evaluation.card import wilson_interval

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "experiments"


@dataclass(frozen=True)
class Experiment:
    flags: tuple[str, ...]
    """Trainer flags on top of the preset: the env, its weak-start recipe, the budget."""
    start_at_most: float | None
    end_at_least: float | None
    paper: float
    """The paper's final success (%) for this env (its CoT ablation table for the no-CoT rows)."""
    seeds: tuple[int, ...] = (1, 2, 3)
    notes: str = ""
    metric: str = "eval/greedy_success"
    also_evaluate: tuple[tuple[str, str], ...] = ()
    """(label, ``--eval-env-kwargs``) of further greedy evaluations of the SFT start and the final model
    (ALFWorld's out-of-distribution games), written to ``also_evaluated.json``."""
    preset: str = "cpu-tiny"
    """The trainer preset under ``flags``: ``cpu-tiny`` (the embedded model) or ``cpu-smollm2`` (the pretrained SmolLM2 VLM)."""


# The weak-start recipes are docs/training.md's ("Weak-start recipes, one per env"); the no-CoT
# runs start from an SFT on action-only data with the same budget, as the paper's ablation did.
_NUMBERLINE = ("--env-id", "gym_cards/NumberLine-v0")
_EZPOINTS = ("--env-id", "gym_cards/EZPoints-v0", "--sft-wrong-state-frac", "0.5", "--sft-wrong-action-prob", "0.75",
             "--eval-greedy-episodes", "500", "--eval-every", "10")
EXPERIMENTS: dict[str, Experiment] = {
    "numberline": Experiment(_NUMBERLINE, start_at_most=0.45, end_at_least=0.90, paper=89.4,
                             metric="eval/greedy_start_success", notes="the README's main job (demo preset)"),
    "numberline-nocot": Experiment(_NUMBERLINE + ("--cot", "False"), start_at_most=None, end_at_least=None, paper=26.9,
                                   metric="eval/greedy_start_success"),
    "ezpoints": Experiment(_EZPOINTS, start_at_most=0.25, end_at_least=0.50, paper=50.0),
    "ezpoints-nocot": Experiment(_EZPOINTS + ("--cot", "False"), start_at_most=None, end_at_least=None, paper=29.9),
    # 1,500 alignment steps (not cpu-tiny's 100): the player's total is a sum over two or more
    # cards, not one glyph; after 1,500 steps SFT's greedy CoT states it right in 0.73 of 328
    # held-out states (0.37 after 100), the dealer's card in 1.00. Rollouts at the paper's T 0.2:
    # at cpu-tiny's T 1.0 the greedy policy became "always stand" (temperature_1.0/ in its folder).
    "blackjack": Experiment(("--env-id", "gym_cards/Blackjack-v0", "--sft-wrong-state-frac", "0.5",
                             "--sft-wrong-action-prob", "0.75", "--align-steps", "1500", "--temperature", "0.2",
                             "--eval-greedy-episodes", "5000",
                             "--eval-every", "40", "--num-updates", "80"),
                            start_at_most=0.33, end_at_least=0.41, paper=40.2, seeds=(1,),
                            notes="'always stand' wins 0.379; the result must beat it by more than the interval"),
    # Trained on the largest train split available (the generated 3,553 games once
    # `generate --preset official --splits train` has run, else the 12 shipped ones; config.json
    # records which); evaluated on unseen games, in and out of distribution, never on train games.
    # Clean labels and 700 SFT steps: with 20% wrong labels and 300 steps the model reproduced 9% of
    # its training answers and named a valid command in 9% of held-out steps (no start ceiling here).
    "alfworld": Experiment(("--env-id", "alfworld/ALFWorld-v0", "--sft-samples", "3000", "--sft-steps", "700",
                            "--thought-coef", "0.2",
                            "--eval-env-kwargs", json.dumps({"split": "eval_in_distribution"}),
                            "--eval-greedy-episodes", "140", "--eval-sampled", "False", "--eval-every", "10",
                            "--num-updates", "20"),
                           start_at_most=None, end_at_least=None, paper=21.7, seeds=(1,),
                           also_evaluate=(("out_of_distribution", json.dumps({"split": "eval_out_of_distribution"})),),
                           notes="target: the end above the SFT start by more than the interval, in and out of distribution"),
    "points24": Experiment(("--env-id", "gym_cards/Points24-v0", "--sft-wrong-state-frac", "0.1",
                            "--sft-wrong-action-prob", "0.75", "--eval-greedy-episodes", "500",
                            "--eval-every", "10", "--num-updates", "40"),
                           start_at_most=None, end_at_least=None, paper=2.3, seeds=(1,),
                           notes="report with the solvable fraction (the oracle's success)"),
    # The pretrained SmolLM2-135M VLM (--preset cpu-smollm2: fp32, full fine-tuning, one thread, 8 envs
    # x 4 steps per update). NumberLine: cpu-tiny's CoT recipe and weak start at the preset's budget
    # (30 SFT steps of 16, 8 updates), plus 400 caption alignment steps (~17 min): without them SFT
    # left SmolLM2 stating the current number right in 0.23 of the states.
    "numberline-smollm2": Experiment(_NUMBERLINE + ("--align-caption-steps", "400"), start_at_most=0.45,
                                     end_at_least=0.90, paper=89.4, seeds=(1,),
                                     metric="eval/greedy_start_success", preset="cpu-smollm2",
                                     notes="the CoT recipe on the pretrained backbone"),
    # ALFWorld: action-only SFT on clean expert labels, then PPO. A sample is a ~400-token prompt: an SFT step of 8 takes ~45 s, a PPO update ~5 min, and a
    # held-out episode step ~2.5 s, so 30 SFT steps, 3 updates, and 10 episodes of at most 10 steps
    # per evaluation (training episodes too; the expert solves every evaluation game within 10 steps,
    # median 6), at the start and the end, in and out of distribution.
    "alfworld-smollm2": Experiment(("--env-id", "alfworld/ALFWorld-v0", "--cot", "False",
                                    "--env-kwargs", json.dumps({"max_steps": 10}),
                                    "--sft-samples", "400", "--sft-steps", "30", "--sft-batch-size", "8",
                                    "--sft-wrong-state-frac", "0", "--align-steps", "0", "--aux-reading-coef", "0",
                                    "--max-new-tokens", "24", "--thought-coef", "0.2",
                                    "--eval-env-kwargs", json.dumps({"split": "eval_in_distribution"}),
                                    "--eval-greedy-episodes", "10", "--eval-batch-size", "10",
                                    "--eval-every", "3", "--num-updates", "3"),
                                   start_at_most=None, end_at_least=None, paper=21.7, seeds=(1,), preset="cpu-smollm2",
                                   also_evaluate=(("out_of_distribution",
                                                   json.dumps({"split": "eval_out_of_distribution"})),),
                                   notes="targets: the SFT start above the tiny model's 0.000 and the end above the "
                                         "SFT start, each by more than the interval, in distribution"),
}


def with_flags(flags: tuple[str, ...], **values: str) -> tuple[str, ...]:
    """``flags`` with each ``--name value`` of ``values`` (``name`` in snake case) set, replaced or appended."""
    out = list(flags)
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if flag in out:
            out[out.index(flag) + 1] = value
        else:
            out += [flag, value]
    return tuple(out)


# The critic-free algorithms (docs/training.md, Algorithms) from each env's PPO experiment: the same
# SFT start (its recipe, run again with the same seed: the same model), the same num_envs x num_steps
# x num_updates env-step budget (a critic-free run stops once it has taken it) and the same
# evaluation. Groups of 4: cpu-tiny's 16 envs compare 4 starts per round.
GROUP_SIZE = 4


# Format failures pushed down: by default an unparsable answer plays a random move and leaves the
# policy loss, and in the first critic-free runs the training parse-failure rate climbed (NumberLine
# GRPO 0.04 -> 0.83). With these flags it costs the turn (the game does not advance, reward -1) and
# stays in the policy loss.
FORMAT_PENALTY = dict(on_parse_failure="penalty", keep_format_failures="True")


def variant(base: str, notes: str, seeds: tuple[int, ...] = (1,), **flags: str) -> Experiment:
    """``base``'s experiment (SFT recipe, env-step budget, evaluation) with ``flags`` changed."""
    exp = EXPERIMENTS[base]
    return dataclasses.replace(exp, flags=with_flags(exp.flags, **flags), seeds=seeds, notes=notes)


def critic_free(base: str, algo: str, seeds: tuple[int, ...] = (1,), notes: str = "", **flags: str) -> Experiment:
    """``base``'s experiment trained with ``algo`` in groups of ``GROUP_SIZE``."""
    return variant(base, f"{algo} from the {base} experiment's SFT start and env-step budget" + (f"; {notes}" if notes else ""),
                   seeds, algo=algo, group_size=str(GROUP_SIZE), **flags)


def ppo_variant(base: str, notes: str, seeds: tuple[int, ...] = (1,), **flags: str) -> Experiment:
    """PPO as in ``base``'s experiment with ``flags`` changed."""
    return variant(base, f"PPO as in {base}, {notes}", seeds, **flags)


EXPERIMENTS.update({
    "numberline-grpo": critic_free("numberline", "grpo"),
    "numberline-gigpo": critic_free("numberline", "gigpo"),
    "numberline-rloo": critic_free("numberline", "rloo"),
    "ezpoints-grpo": critic_free("ezpoints", "grpo", seeds=(1, 2, 3)),
    "ezpoints-gigpo": critic_free("ezpoints", "gigpo", seeds=(1, 2, 3)),
    "ezpoints-rloo": critic_free("ezpoints", "rloo"),
    "blackjack-grpo": critic_free("blackjack", "grpo"),
    "blackjack-gigpo": critic_free("blackjack", "gigpo", notes="most hands are one step: close to GRPO"),
    # Evaluated every 20 updates, not 10: the PPO run took 48 min, most of it SFT and five evaluations.
    "points24-gigpo": critic_free("points24", "gigpo", eval_every="20"),
    # A round of whole episodes is 50 steps per env (the policy rarely finishes a game): 8 envs x 16
    # steps keeps PPO's 20 x 128 env steps in about 7 updates of 8 episodes (16 envs: 4 updates).
    "alfworld-gigpo": critic_free("alfworld", "gigpo", num_envs="8", num_steps="16"),
    "numberline-grpo-penalty": critic_free("numberline", "grpo", **FORMAT_PENALTY),
    "numberline-gigpo-penalty": critic_free("numberline", "gigpo", seeds=(1, 2, 3), **FORMAT_PENALTY),
    "blackjack-gigpo-penalty": critic_free("blackjack", "gigpo", **FORMAT_PENALTY),
    # The value loss unclipped (--value-clip 0): the comparison that kept its default at 0.1 (docs/training.md).
    "ezpoints-vclip0": ppo_variant("ezpoints", "value loss unclipped", seeds=(1, 2, 3), value_clip="0"),
    "blackjack-vclip0": ppo_variant("blackjack", "value loss unclipped", value_clip="0"),
    # At the end of `blackjack` 7.8% of greedy answers did not parse and played a random move.
    "blackjack-vclip0-penalty": ppo_variant("blackjack", "value loss unclipped, format failures penalised",
                                            seeds=(1, 2, 3), value_clip="0", **FORMAT_PENALTY),
})
ABLATION_PAIRS = (("numberline", "numberline-nocot"), ("ezpoints", "ezpoints-nocot"))


def evaluations(metrics_csv: Path, metric: str) -> list[tuple[int, float, float]]:
    """(update, success, episodes behind it) of every evaluation row, the SFT start first."""
    count = "eval/greedy_starts" if metric == "eval/greedy_start_success" else "eval/greedy_episodes"
    with open(metrics_csv) as f:
        return [(int(r["update"]), float(r[metric]), float(r[count])) for r in csv.DictReader(f) if r.get(metric)]


def stable(points: list[tuple[int, float, float]], reach: float = 0.90, drop: float = 0.10) -> bool | None:
    """Once ``reach`` is reached, no later evaluation more than ``drop`` below the running best (None: never reached)."""
    best, reached = 0.0, False
    for _, value, _ in points:
        if reached and value < best - drop:
            return False
        best = max(best, value)
        reached = reached or value >= reach
    return True if reached else None


def run_dirs(name: str) -> list[Path]:
    folder = DOCS / name
    return ([folder] if (folder / "metrics.csv").exists() else []) + sorted(folder.glob("seed_*/"))


def trainer_command(name: str, seed: int, out: Path) -> list[str]:
    return [sys.executable, "-m", "baselines.vlm_ppo", "demo", "--preset", EXPERIMENTS[name].preset, *EXPERIMENTS[name].flags,
            "--seed", str(seed), "--output-dir", str(out)]


def run(name: str, seeds: list[int], work: Path) -> None:
    for seed in seeds:
        out = work / name / f"seed_{seed}"
        command = trainer_command(name, seed, out)
        print("$", " ".join(command), flush=True)
        played = alfworld_train_set(EXPERIMENTS[name])  # before the run: what it will play
        t0 = time.time()
        subprocess.run(command, check=True, cwd=ROOT)
        dest = collect(name, seed, out, wall_minutes=(time.time() - t0) / 60, played=played)
        if EXPERIMENTS[name].also_evaluate:
            (dest / "also_evaluated.json").write_text(json.dumps(evaluate_more(name, out), indent=2) + "\n")


def evaluate_more(name: str, out: Path) -> dict[str, dict[str, dict[str, float]]]:
    """Greedy held-out evaluations of the SFT start and the final model on each of ``also_evaluate``."""
    import torch

    from baselines.vlm_ppo.checkpoint import latest_checkpoint
    from baselines.vlm_ppo.config import parse_args
    from baselines.vlm_ppo.evaluation import evaluate
    from baselines.vlm_ppo.train import build_policy

    torch.set_num_threads(1)
    models = {"sft": out / "sft", "final": latest_checkpoint(out) / "model"}
    results: dict[str, dict[str, dict[str, float]]] = {}
    for which, model in models.items():
        policy = None  # loaded once per model, evaluated on every ``also_evaluate`` entry
        for label, env_kwargs in EXPERIMENTS[name].also_evaluate:
            _, cfg = parse_args(["eval", "--preset", EXPERIMENTS[name].preset, *EXPERIMENTS[name].flags, "--model", str(model),
                                 "--eval-env-kwargs", env_kwargs, "--output-dir", str(out)])
            if policy is None:
                policy = build_policy(cfg)
            results.setdefault(label, {})[which] = evaluate(cfg, policy, greedy=True)
            print(f"{label}, {which}: greedy success {results[label][which]['success']:.3f}", flush=True)
    return results


def collect(name: str, seed: int, out: Path, wall_minutes: float | None = None, played: dict | None = None) -> Path:
    """Copy a finished run's metrics.csv and curve.png to docs/experiments/NAME[/seed_S], with its config.json."""
    exp = EXPERIMENTS[name]
    dest = DOCS / name if seed == exp.seeds[0] else DOCS / name / f"seed_{seed}"
    dest.mkdir(parents=True, exist_ok=True)
    for file in ("metrics.csv", "curve.png"):
        shutil.copy(out / file, dest / file)
    (dest / "config.json").write_text(json.dumps(
        {"experiment": name, "seed": seed, "command": f"python benchmarks/experiments.py run {name} --seeds {seed}",
         "trainer_command": " ".join(["python", *trainer_command(name, seed, Path("OUT"))[1:]]),
         "wall_minutes": None if wall_minutes is None else round(wall_minutes, 1),
         "definition": asdict(exp), **(alfworld_train_set(exp) if played is None else played),
         "trainer_config": json.loads((out / "ppo_config.json").read_text())}, indent=2) + "\n")
    print(f"wrote {dest}", flush=True)
    return dest


def alfworld_train_set(exp: Experiment) -> dict[str, str]:
    """Which ALFWorld train split an experiment played (the generated official one or the shipped one)."""
    if "alfworld/ALFWorld-v0" not in exp.flags:
        return {}
    from vlm_envs.alfworld_wrap.games import full_train_dir

    full = full_train_dir()
    return {"alfworld_train_games": "the 3,553 generated by `python -m vlm_envs.alfworld_wrap.generate --preset "
                                    "official --splits train`" if full else "the 12 shipped with the package"}


def fmt(value: float, n: float) -> str:
    low, high = wilson_interval(value * n, n)  # NumberLine's start success is a mean over states, so not a whole count
    return f"{value:.3f} ({low:.3f}-{high:.3f}, n={n:.0f})"


def summary(names: list[str]) -> str:
    lines = ["| experiment | run | SFT start | best | end | updates | stable | start target | end target |",
             "|---|---|---|---|---|---|---|---|---|"]
    finals: dict[str, list[float]] = {}
    for name in names:
        exp = EXPERIMENTS[name]
        for folder in run_dirs(name):
            points = evaluations(folder / "metrics.csv", exp.metric)
            (_, start, n0), (last_update, end, n1) = points[0], points[-1]
            best_update, best, nb = max(points, key=lambda p: p[1])
            finals.setdefault(name, []).append(end)
            label = json.loads((folder / "config.json").read_text())["seed"]
            start_ok = "" if exp.start_at_most is None else ("met" if start <= exp.start_at_most else "missed")
            end_ok = "" if exp.end_at_least is None else ("met" if end >= exp.end_at_least else "missed")
            is_stable = {True: "yes", False: "no", None: "never reached 0.90"}[stable(points)]
            lines.append(f"| {name} | seed {label} | {fmt(start, n0)} | {fmt(best, nb)} (update {best_update}) | "
                         f"{fmt(end, n1)} | {last_update + 1} | {is_stable} | {start_ok} | {end_ok} |")
    extra = [(name, folder) for name in names for folder in run_dirs(name) if (folder / "also_evaluated.json").exists()]
    if extra:
        lines += ["", "| experiment | run | further evaluation | SFT start | final |", "|---|---|---|---|---|"]
        for name, folder in extra:
            seed = json.loads((folder / "config.json").read_text())["seed"]
            for label, by_model in json.loads((folder / "also_evaluated.json").read_text()).items():
                start, end = by_model["sft"], by_model["final"]
                lines.append(f"| {name} | seed {seed} | {label} | {fmt(start['success'], start['episodes'])} | "
                             f"{fmt(end['success'], end['episodes'])} |")
    pairs = [(a, b) for a, b in ABLATION_PAIRS if a in finals and b in finals]
    if pairs:
        lines += ["", "| CoT ablation | with CoT: final (mean, min-max) | without CoT | seeds | paper (CoT / no CoT) |",
                  "|---|---|---|---|---|"]
        show = lambda xs: f"{sum(xs) / len(xs):.3f} ({min(xs):.3f}-{max(xs):.3f})"  # noqa: E731
        for a, b in pairs:
            lines.append(f"| {a} | {show(finals[a])} | {show(finals[b])} | {len(finals[a])} / {len(finals[b])} | "
                         f"{EXPERIMENTS[a].paper} / {EXPERIMENTS[b].paper} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="run one experiment and write docs/experiments/NAME")
    run_parser.add_argument("name", choices=sorted(EXPERIMENTS))
    run_parser.add_argument("--seeds", type=int, nargs="+", help="default: the experiment's own seeds")
    run_parser.add_argument("--work", default="runs/experiments", help="where the runs' full outputs go")
    summary_parser = sub.add_parser("summary", help="print the results of committed experiments")
    summary_parser.add_argument("names", nargs="*", help=f"default: every committed one of {sorted(EXPERIMENTS)}")
    args = parser.parse_args()
    unknown = set(getattr(args, "names", [])) - set(EXPERIMENTS)
    if unknown:
        parser.error(f"unknown experiments {sorted(unknown)}; choose from {sorted(EXPERIMENTS)}")
    if args.command == "run":
        run(args.name, args.seeds or list(EXPERIMENTS[args.name].seeds), ROOT / args.work)
    else:
        table = summary(args.names or [n for n in EXPERIMENTS if run_dirs(n)])
        print(table)
        if not args.names:
            DOCS.mkdir(parents=True, exist_ok=True)
            (DOCS / "summary.md").write_text(f"# Experiments\n\nWritten by `python benchmarks/experiments.py summary`; "
                                             f"greedy held-out success, Wilson 95% intervals.\n\n{table}\n")


if __name__ == "__main__":
    main()
