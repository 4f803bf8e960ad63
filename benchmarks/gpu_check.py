"""The trainer at 7B scale on a GPU, in one command with no download: the check to run when a GPU is available.

``python benchmarks/gpu_check.py`` (a CUDA machine) builds two randomly initialised 7B models from
configs in code and runs one PPO update of the real trainer (``train_ppo``) on each with the paper
preset: bf16, LoRA r128/α256, gradient checkpointing, minibatch 1, T 0.2, on NumberLine with 16
envs x 4 steps, then the same with 2 processes (``accelerate launch --multi_gpu``) if 2 GPUs are
present. ``python benchmarks/gpu_check.py --tiny`` runs the same code on the same two families at
tiny widths on the CPU (CI runs it, so it cannot rot), with fewer new tokens and epochs.

* ``llava_next``: LLaVA-NeXT-7B's geometry (Mistral-7B text, CLIP-L/14 at 336 px), in
  ``--image-mode reference`` (RL4VLM's 576 plain image tokens), 7.57B parameters;
* ``qwen2_5_vl``: Qwen2.5-VL-7B's geometry (Qwen2 text, its windowed ViT and merger), native
  dynamic resolution (121 image tokens for a 300x300 frame), 8.29B parameters.

The processors are the tiny families' (``tests/tiny_families.py``: a byte-level BPE
trained in code, the PIL image processors at the real image geometry); the models keep their real
vocabularies (32,064 and 152,064), so the LM head costs what it costs, and sampled ids beyond the
small tokenizer decode to nothing. Weights are built directly on the GPU in bf16, the LM head
scaled so that the logits span ~30 units (``widen_logits``, as a trained 7B's do: the bf16
sampler/scorer gap depends on it), saved once and loaded by the trainer as a Hub checkpoint is.
Random weights rarely write an ``"action"`` key, so every answer enters the policy loss
(``--missing-action-key last5``).

Per run it prints: rollout tokens/s (``charts/tokens_per_s``), update samples/s (transitions x
epochs / the update's wall time: behaviour scoring, bootstrap, epochs), peak GPU memory (peak
host RSS on the CPU), the epoch-0 ratio deviation (exactly 0 when scoring is consistent) and the
behaviour-logp gap (``charts/behaviour_logp_gap`` mean / max, nats per answer). Each run is its
own process, so its memory peak is its own. Planned to finish in under 8 minutes on one H100
(about 3 minutes per model: 1 minute to build and save, 0.5 to load, rollout, 2 epochs, checkpoint);
this has not been run on a GPU yet.

``--backbone smollm2`` checks the pretrained backbone instead (``--model smollm2-vlm``,
``baselines/vlm_ppo/smollm2.py``): it builds the SmolLM2 VLM once (or takes ``--smollm2-model DIR``),
then runs the standard budgets of ``benchmarks/experiments.py``'s ``numberline-smollm2`` and
``alfworld-smollm2`` (the ``demo`` pipeline under ``--preset cpu-smollm2``: fp32, full fine-tuning;
alignment, SFT, greedy evaluation, PPO, greedy evaluation), each in its own process, and prints the
held-out greedy success of the SFT start and after PPO (ALFWorld: in distribution). Planned for
under 8 minutes on one H100, an estimate that has not been measured (see docs/training.md, "The
GPU check"). With ``--tiny`` the same commands run on the CPU at a smoke budget (``SMOKE_BUDGET``).
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULT = "GPU_CHECK_RESULT "
ROOT = Path(__file__).resolve().parents[1]
# the tiny checkpoints are test support (tests/tiny_families.py), not part of the installed trainer
sys.path.insert(0, str(ROOT))
FAMILIES = ("llava_next", "qwen2_5_vl")
BACKBONES = ("random", "smollm2")
SMOLLM2_EXPERIMENTS = {"numberline": "numberline-smollm2", "alfworld": "alfworld-smollm2"}
"""``--envs`` -> the experiment of ``benchmarks/experiments.py`` whose budget ``--backbone smollm2`` runs."""
SMOKE_BUDGET = ("--align-steps", "1", "--align-caption-steps", "1", "--sft-samples", "4", "--sft-steps", "1",
                "--sft-batch-size", "2", "--num-envs", "1", "--num-steps", "2", "--num-updates", "1", "--minibatch-size", "1",
                "--grad-accum-steps", "2", "--max-new-tokens", "4", "--eval-greedy-episodes", "1",
                "--eval-batch-size", "1", "--eval-every", "1", "--eval-max-steps", "1")
"""``--backbone smollm2 --tiny``: laid over each experiment's flags, the same pipeline in under a minute of CPU time per env."""

# Real checkpoint configs (llava-hf/llava-v1.6-mistral-7b-hf, Qwen/Qwen2.5-VL-7B-Instruct), laid over
# the tiny family's config; the ``sizes`` are the processor's image geometry and the 7B's init std.
SEVEN_B: dict[str, dict] = {
    "llava_next": {
        "sizes": {"image_size": 336, "patch_size": 14, "initializer_range": 0.02,
                  "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]},
        "geometry": {
            "text": {"vocab_size": 32064, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 32768,
                     "rms_norm_eps": 1e-5, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}},
            "vision": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                       "num_attention_heads": 16, "projection_dim": 768},
            "model": {"image_seq_length": 576},
        },
    },
    "qwen2_5_vl": {
        "sizes": {"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 16384, "initializer_range": 0.02},
        "geometry": {
            "text": {"vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                     "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 128000,
                     "rms_norm_eps": 1e-6,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}},
            "vision": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                       "out_hidden_size": 3584, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
                       "tokens_per_second": 2},
        },
    },
}


def build(family: str, path: Path, tiny: bool, logit_span: float) -> None:
    import torch

    from tests.tiny_families import build_tiny

    if tiny:
        build_tiny(family, path, logit_span=logit_span)
    else:
        build_tiny(family, path, geometry=SEVEN_B[family]["geometry"], logit_span=logit_span, dtype=torch.bfloat16,
                   device="cuda", **SEVEN_B[family]["sizes"])


def ppo_config(family: str, model: Path, output_dir: Path, args: argparse.Namespace):
    """The paper preset on NumberLine, 16 envs x 4 steps, one update, every answer in the policy loss."""
    from baselines.vlm_ppo.config import Config, preset_values
    from tests.tiny_families import CONV_TEMPLATES

    return Config(**{
        **preset_values("paper", "gym_cards/NumberLine-v0"), "preset": "paper",
        "output_dir": str(output_dir), "model": str(model), "seed": 0,
        "conv_template": CONV_TEMPLATES[family],
        "image_mode": "reference" if family.startswith("llava") else "native",
        "num_envs": 16, "num_steps": 4, "num_updates": 1, "ppo_epochs": args.ppo_epochs,
        "max_new_tokens": args.max_new_tokens, "missing_action_key": "last5", "eval_every": 0,
        "threads": 1 if args.tiny else 0,
    })


def run_one(args: argparse.Namespace) -> None:
    """One PPO update of ``args.one`` (in each of accelerate's processes); the main one prints a result line."""
    import torch
    from accelerate import PartialState

    from baselines.vlm_ppo.train import train_ppo

    family, root = args.one, Path(args.workdir) / args.one
    model = root / "model"
    t0 = time.time()
    if not (model / "config.json").exists():
        if PartialState().num_processes > 1:
            raise RuntimeError(f"{model} is missing: the single-process run builds it first")
        build(family, model, args.tiny, args.logit_span)
    build_s = time.time() - t0
    cuda = torch.cuda.is_available() and not args.tiny
    if cuda:  # the build's freed tensors must not count in the update's peak
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    processes = PartialState().num_processes
    cfg = ppo_config(family, model, root / f"run_{processes}", args)
    t1 = time.time()
    metrics = train_ppo(cfg)
    run_s = time.time() - t1
    if not PartialState().is_main_process:
        return
    samples = cfg.num_envs * cfg.num_steps * cfg.ppo_epochs
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    row = {"family": family, "processes": processes,
           "device": torch.cuda.get_device_name() if cuda else "cpu",
           "params_B": saved_parameters(model) / 1e9, "build_s": build_s, "run_s": run_s,
           "tokens_per_s": metrics["charts/tokens_per_s"], "samples_per_s": samples / metrics["charts/update_s"],
           "peak_GiB": peak / 2**30, "epoch0_ratio_dev": metrics["charts/epoch0_ratio_dev"],
           "gap": metrics["charts/behaviour_logp_gap"], "gap_max": metrics["charts/behaviour_logp_gap_max"],
           "tis_weight": metrics.get("charts/tis_weight", float("nan"))}
    print(RESULT + json.dumps(row), flush=True)


def saved_parameters(model: Path) -> int:
    """Parameters counted from the saved safetensors headers (no weights loaded)."""
    import math

    from safetensors import safe_open

    total = 0
    for file in model.glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            total += sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())
    return total


def launch(args: argparse.Namespace, family: str, processes: int, workdir: Path) -> dict:
    """Run :func:`run_one` in a fresh process (or ``processes`` of them); stderr streams through."""
    flags = [str(Path(__file__).resolve()), "--one", family, "--workdir", str(workdir), "--max-new-tokens", str(args.max_new_tokens),
             "--ppo-epochs", str(args.ppo_epochs), "--logit-span", str(args.logit_span)] + (["--tiny"] if args.tiny else [])
    cmd = [sys.executable, *flags]
    if processes > 1:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *flags]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    lines = [line[len(RESULT):] for line in out.stdout.splitlines() if line.startswith(RESULT)]
    if out.returncode or not lines:
        return {"family": family, "processes": processes, "failed": f"exit code {out.returncode} (traceback above)"}
    return json.loads(lines[-1])


def smollm2_model(args: argparse.Namespace, workdir: Path) -> tuple[Path, float]:
    """The SmolLM2 VLM's folder (``--smollm2-model``, or built once into ``workdir``) and the seconds the build took."""
    if args.smollm2_model:
        return Path(args.smollm2_model), 0.0
    path, t0 = workdir / "smollm2-vlm", time.time()
    subprocess.run([sys.executable, "-m", "baselines.vlm_ppo.smollm2", "--path", str(path)], check=True, cwd=ROOT)
    return path, time.time() - t0


def run_smollm2(args: argparse.Namespace, env: str, model: Path, workdir: Path) -> dict:
    """One experiment's ``demo`` on the built model, in its own process; greedy success before and after PPO."""
    import experiments  # benchmarks/experiments.py, beside this script

    name = SMOLLM2_EXPERIMENTS[env]
    exp, out = experiments.EXPERIMENTS[name], workdir / name
    command = [*experiments.trainer_command(name, exp.seeds[0], out), "--model", str(model),
               *(SMOKE_BUDGET if args.tiny else ())]
    print("$", " ".join(command), flush=True)
    t0 = time.time()
    done = subprocess.run(command, cwd=ROOT)
    if done.returncode:
        return {"run": name, "failed": f"exit code {done.returncode} (traceback above)"}
    points = experiments.evaluations(out / "metrics.csv", exp.metric)
    (_, before, n_before), (last_update, after, n_after) = points[0], points[-1]
    return {"run": name, "minutes": (time.time() - t0) / 60, "metric": exp.metric, "updates": last_update + 1,
            "before": experiments.fmt(before, n_before), "after": experiments.fmt(after, n_after)}


def print_smollm2_table(rows: list[dict], device: str) -> None:
    print("\n| run | device | minutes | greedy success: SFT start | after PPO | updates | metric |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "failed" in r:
            print(f"| {r['run']} | {device} | FAILED: {r['failed']} |")
            continue
        print(f"| {r['run']} | {device} | {r['minutes']:.1f} | {r['before']} | {r['after']} | {r['updates']} | {r['metric']} |")


def check_smollm2(args: argparse.Namespace, workdir: Path) -> list[dict]:
    model, build_s = smollm2_model(args, workdir)
    print(f"SmolLM2 VLM at {model} (built in {build_s:.0f} s)" if build_s else f"SmolLM2 VLM at {model}", flush=True)
    return [run_smollm2(args, env, model, workdir) for env in args.envs]


def print_table(rows: list[dict], tiny: bool) -> None:
    memory = "peak host RSS (GiB)" if tiny else "peak GPU memory (GiB)"
    print(f"\n| model | processes | device | params (B) | build s | load + update s | rollout tokens/s | "
          f"update samples/s | {memory} | epoch-0 ratio dev | behaviour gap mean / max | TIS weight |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "failed" in r:
            print(f"| {r['family']} | {r['processes']} | FAILED: {r['failed']} |")
            continue
        print(f"| {r['family']} | {r['processes']} | {r['device']} | {r['params_B']:.3g} | {r['build_s']:.0f} | "
              f"{r['run_s']:.0f} | {r['tokens_per_s']:.0f} | {r['samples_per_s']:.2f} | {r['peak_GiB']:.2f} | "
              f"{r['epoch0_ratio_dev']:.2g} | {r['gap']:.3g} / {r['gap_max']:.3g} | {r['tis_weight']:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny widths on the CPU (the CI version); with "
                        "--backbone smollm2, the same model at a smoke budget")
    parser.add_argument("--backbone", default="random", choices=BACKBONES,
                        help="random: the randomly initialised 7B families (--families); smollm2: the pretrained "
                             "SmolLM2 VLM on the standard budgets of NumberLine and ALFWorld (--envs)")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--envs", nargs="+", default=list(SMOLLM2_EXPERIMENTS), choices=SMOLLM2_EXPERIMENTS,
                        help="--backbone smollm2: which experiments to run")
    parser.add_argument("--smollm2-model", default="", help="--backbone smollm2: an already built model folder "
                        "(python -m baselines.vlm_ppo.smollm2 --path DIR); default: build it into the workdir")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default 64 (16 with --tiny)")
    parser.add_argument("--ppo-epochs", type=int, default=None, help="default 2 (1 with --tiny)")
    parser.add_argument("--logit-span", type=float, default=30.0, help="logit span (max - min) the LM head is scaled to")
    parser.add_argument("--workdir", default="", help="where models and runs go (default: a temporary folder, removed)")
    parser.add_argument("--one", choices=FAMILIES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.max_new_tokens = args.max_new_tokens or (16 if args.tiny else 64)
    args.ppo_epochs = args.ppo_epochs or (1 if args.tiny else 2)
    if args.one:
        run_one(args)
        return
    import torch

    gpus = 0 if args.tiny else torch.cuda.device_count()
    if not args.tiny and gpus == 0:
        raise SystemExit("gpu_check: no CUDA device found; --tiny runs the same code at tiny widths on the CPU")
    start = time.time()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="gpu_check_"))
    if args.backbone == "smollm2":
        try:
            rows = check_smollm2(args, workdir)
        finally:
            if not args.workdir:
                shutil.rmtree(workdir, ignore_errors=True)
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        print(f"\nSmolLM2-135M VLM, {'a smoke budget' if args.tiny else 'the standard budgets'} of "
              f"benchmarks/experiments.py (--preset cpu-smollm2); {time.time() - start:.0f} s in all")
        print_smollm2_table(rows, device)
        if any("failed" in r for r in rows):
            raise SystemExit(1)
        return
    rows = []
    try:
        for family in args.families:
            rows.append(launch(args, family, 1, workdir))
            if gpus >= 2 and "failed" not in rows[-1]:
                rows.append(launch(args, family, 2, workdir))
            if not args.workdir:
                shutil.rmtree(workdir / family, ignore_errors=True)  # 15 GB per 7B model
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{'tiny widths on the CPU' if args.tiny else f'{gpus} GPU(s)'}; paper preset (bf16, LoRA r128, "
          f"gradient checkpointing, minibatch 1, T 0.2), NumberLine, 16 envs x 4 steps, {args.ppo_epochs} epochs, "
          f"up to {args.max_new_tokens} new tokens; {time.time() - start:.0f} s in all")
    print_table(rows, args.tiny)
    if any("failed" in r for r in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
