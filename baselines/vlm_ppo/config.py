"""One configuration for every command (``sft-data``, ``sft``, ``ppo``, ``eval``, ``demo``).

Every field has a docstring; :func:`parse_args` turns the dataclass into a command line
(``--num-envs 8``, ``--no-bootstrap-on-truncation``) whose ``--help`` shows those docstrings.
Defaults are the paper's GPU recipe (spec ppo.md §9.2, NumberLine column) where one exists;
``--preset cpu-tiny`` switches to the settings of the offline CPU demo.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import textwrap
from dataclasses import dataclass


@dataclass
class Config:
    # --- run ---
    output_dir: str = "runs/numberline"
    """Directory for everything a run writes: SFT data, models, checkpoints, metrics.csv, tb/, curve.png."""
    seed: int = 1
    """Seed for Python, numpy, torch and the training envs (process ``i`` of a multi-GPU run adds ``1000*i``)."""
    threads: int = 0
    """``torch.set_num_threads`` (0 keeps torch's default). Use 2 on the 2-core CI machine."""
    preset: str = ""
    """Named group of defaults applied before explicit flags: ``cpu-tiny`` (the offline NumberLine demo) or empty."""

    # --- environment and text interface ---
    env_id: str = "gym_cards/NumberLine-v0"
    """Gymnasium id of the environment (``gym_cards/EZPoints-v0``, ``gym_cards/Points24-v0``, ``gym_cards/Blackjack-v0``, ...)."""
    env_kwargs: str = "{}"
    """JSON dict of extra ``gym.make`` keyword arguments, e.g. ``'{"image_size": [96, 96]}'``."""
    cot: bool = True
    """Use the chain-of-thought prompt (False: the action-only prompt of the no-CoT ablation)."""
    prompt_wording: str = "reference"
    """``reference`` (the RL4VLM templates byte for byte) or ``clean`` (typos and stray backslashes fixed)."""
    conv_template: str = "llava_v1"
    """How the task prompt is wrapped: a LLaVA conversation name (``llava_v1``, ``vicuna_v1``) or ``chat_template`` (the processor's own)."""
    parse_mode: str = "lenient"
    """Text-to-action parser mode of ``vlm_envs.TextActions``: ``strict``, ``lenient`` or ``compat``."""
    on_parse_failure: str = "random"
    """What an unparsable answer does: ``random`` action (paper), ``penalty`` or ``noop``."""
    format_penalty: float = -1.0
    """Reward of an unparsable answer when ``on_parse_failure=penalty``."""

    # --- model ---
    model: str = "tiny"
    """Model id or path for ``AutoModelForImageTextToText`` (e.g. ``llava-hf/llava-v1.6-mistral-7b-hf``); ``tiny`` builds the embedded offline model."""
    dtype: str = "float32"
    """Weights dtype: ``float32`` (CPU) or ``bfloat16`` (GPU recipe). Log-probs and the value head are always fp32."""
    lora_r: int = 0
    """LoRA rank (0: train all non-frozen weights). The paper's GPU recipe: 128."""
    lora_alpha: int = 256
    """LoRA alpha (paper: 256)."""
    lora_dropout: float = 0.05
    """LoRA dropout (paper: 0.05); off during rollouts, as all dropout."""
    train_vision: bool = False
    """Also train the vision tower in PPO (default frozen, which is what the reference effectively did, bug T9)."""
    gradient_checkpointing: bool = False
    """Gradient checkpointing for the PPO/SFT update forward pass (turn on for 7B models)."""

    # --- generation and the CoT-scaled log-prob ---
    temperature: float = 0.2
    """Sampling temperature; log-probs use the same tempered softmax (paper: 0.2)."""
    max_new_tokens: int = 256
    """Maximum generated tokens per step (paper: 256)."""
    thought_coef: float = 0.5
    """λ: log π = λ·(sum of CoT-token log-probs) + (sum of action-token log-probs); 0.5 cards, 0.2 ALFWorld."""
    no_key: str = "mask"
    """An answer with no ``"action":`` key: ``mask`` (left out of the policy loss) or ``last5`` (reference: last 5 tokens are the action)."""

    # --- PPO ---
    num_envs: int = 1
    """Parallel environments per process, each with its own per-step prompt."""
    vectorization: str = "sync"
    """How those envs run: ``sync`` (in this process), ``async`` (a subprocess each) or ``ray`` (Ray actors; ``pip install "vlm-envs[ray]"``)."""
    num_steps: int = 512
    """Environment steps per env per PPO update (paper NumberLine: 512)."""
    num_updates: int = 29
    """Number of PPO updates; the LR schedule spans exactly this many (bug T10)."""
    ppo_epochs: int = 4
    """Passes over the rollout buffer per update."""
    minibatch_size: int = 1
    """Transitions per forward/backward pass."""
    grad_accum_steps: int = 128
    """Mini-batches accumulated per optimizer step (paper: 128)."""
    lr: float = 1e-5
    """Initial learning rate (AdamW, betas 0.9/0.999, eps 1e-7, no weight decay)."""
    end_lr: float = 1e-9
    """Final learning rate of the cosine decay (never rises again)."""
    gamma: float = 0.9
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE λ."""
    clip: float = 0.1
    """PPO clip range ε, also used for the value clip."""
    ratio_guard: float = 10.0
    """If any ratio in a mini-batch exceeds this, use only the clipped term (reference guard); 0 turns it off."""
    vf_coef: float = 0.5
    """Value-loss coefficient."""
    entropy_coef: float = 0.0
    """Coefficient of the mean token entropy bonus (paper: none)."""
    max_grad_norm: float = 0.01
    """Gradient-norm clip (paper value; it was probably inactive under DeepSpeed there); 0 turns it off."""
    bootstrap_on_truncation: bool = True
    """Bootstrap V(final obs) on truncation (False: treat truncation as termination, like the reference)."""
    norm_adv: bool = True
    """Normalise advantages over the rollout buffer."""
    success_window: int = 200
    """Rolling window (training episodes) of the logged training success rate (paper: 200)."""

    # --- evaluation, checkpoints, logging ---
    eval_every: int = 5
    """Held-out evaluation every this many updates (and before the first and after the last); 0 turns it off."""
    eval_episodes: int = 50
    """Episodes per held-out evaluation, on fixed seeds ``eval_seed .. eval_seed+eval_episodes-1``."""
    eval_greedy_episodes: int = 0
    """Episodes of the greedy evaluation (0: ``eval_episodes``). Greedy answers are cached per observation, so many episodes cost little; ``eval/greedy_start_success`` averages over the distinct start states (exact for NumberLine's 30 when all appear)."""
    eval_seed: int = 100_000
    """First seed of the held-out evaluation episodes (training seeds are drawn far from it)."""
    eval_sampled: bool = True
    """Also evaluate with sampling at ``temperature`` (greedy is always evaluated)."""
    eval_max_steps: int = 60
    """Step limit of one evaluation episode (safety net; the envs end sooner)."""
    save_every: int = 5
    """Checkpoint every this many updates (and at the end); 0: only at the end."""
    resume: bool = False
    """Continue from ``output_dir/checkpoints/latest`` (model, optimizer, scheduler, RNG and env states)."""
    time_limit_min: float = 0.0
    """Stop PPO (checkpoint, final eval) after this many minutes of wall time; 0: no limit."""

    # --- SFT warm start ---
    sft_data: str = ""
    """SFT data directory (LLaVA conversation JSON + PNGs); default ``output_dir/sft_data``. Generated if missing."""
    sft_samples: int = 2000
    """Number of (image, prompt, answer) samples generated from the env oracle."""
    sft_explore: float = 0.3
    """While collecting SFT data, play a random action with this probability (labels stay the oracle's) to visit off-path states."""
    sft_wrong_state_frac: float = 0.0
    """Fraction of states (chosen by a seeded hash of the state) whose label is replaced by a wrong action, for a weak start policy."""
    sft_wrong_action_prob: float = 1.0
    """In those states, the probability that a sample's label is wrong (below 1 keeps some of the right action to explore)."""
    sft_steps: int = 1000
    """SFT optimizer steps."""
    sft_batch_size: int = 16
    """SFT batch size."""
    sft_lr: float = 2e-5
    """SFT learning rate (cosine to 0, 3% warm-up)."""
    sft_train_vision: bool = True
    """Train the vision tower in SFT (needed for the embedded model, whose tower starts random)."""
    sft_output: str = ""
    """Where the SFT model is saved; default ``output_dir/sft``."""
    align_steps: int = 0
    """Vision alignment steps before SFT (LLaVA stage-1 style): only the vision tower, projector and a linear reading head train, on the reading objective (predict the CoT's number fields from mean-pooled image tokens). 0: off."""
    align_lr: float = 1e-3
    """Learning rate of the vision alignment stage (constant)."""
    aux_reading_coef: float = 0.0
    """Weight of the auxiliary reading loss added to the SFT loss (0: off). Needs answers with number fields (NumberLine)."""


PRESETS: dict[str, dict[str, object]] = {
    # The offline CPU demo: embedded tiny LLaVA on NumberLine, weak SFT start, then PPO.
    # Reading first: 100 vision-alignment steps + the auxiliary reading loss in SFT make the greedy
    # CoT read both numbers right in all 30 states within ~3 min of CPU (docs/training.md). One torch
    # thread: on the shared 2-core machine two threads were ~15x slower per step under load.
    # ~10 min of PPO by default; benchmarks/numberline_ppo_cpu.sh runs the 30-minute experiment.
    "cpu-tiny": dict(
        model="tiny", threads=1, num_envs=16, num_steps=8, num_updates=80, ppo_epochs=2,
        minibatch_size=32, grad_accum_steps=1, lr=3e-4, end_lr=3e-5, max_grad_norm=1.0,
        temperature=1.0, max_new_tokens=64, eval_every=10, eval_episodes=60, eval_greedy_episodes=300,
        save_every=20, success_window=100, time_limit_min=11.0,
        sft_samples=4000, sft_steps=300, sft_batch_size=32, sft_lr=2e-3,
        align_steps=100, align_lr=1e-3, aux_reading_coef=1.0,
        sft_wrong_state_frac=0.5, sft_wrong_action_prob=0.75,
    ),
}


def field_docs(cls: type = Config) -> dict[str, str]:
    """The docstring written under each dataclass field."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


COMMANDS = {
    "sft-data": "generate SFT data from the env oracle (LLaVA conversation JSON + PNGs)",
    "sft": "supervised warm start on the SFT data (generated first if missing)",
    "ppo": "PPO from --model (an SFT output directory, a Hub id, or tiny)",
    "eval": "held-out evaluation of --model (greedy and sampled)",
    "demo": "the whole offline pipeline: SFT data, weak SFT start, eval, PPO, eval, curve PNG",
}


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


def parse_args(argv: list[str] | None = None) -> tuple[str, Config]:
    """Parse ``COMMAND [--field value ...]``; returns the command and the merged config."""
    docs = field_docs()
    parser = argparse.ArgumentParser(
        prog="python -m baselines.vlm_ppo",
        description="PPO for LLaVA-style VLMs on vlm_envs (RL4VLM re-implemented). Commands: "
        + "; ".join(f"{k}: {v}" for k, v in COMMANDS.items()),
    )
    parser.add_argument("command", choices=list(COMMANDS), help="what to run")
    defaults = Config()
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        kind = _bool if isinstance(default, bool) else type(default)
        parser.add_argument(flag, type=kind, default=None, metavar=type(default).__name__.upper(),
                            help=f"{docs.get(f.name, '')} (default: {default!r})".replace("%", "%%"))
    args = parser.parse_args(argv)
    values = {k: v for k, v in vars(args).items() if k != "command" and v is not None}
    preset = values.get("preset", "") or ("cpu-tiny" if args.command == "demo" else "")
    if preset and preset not in PRESETS:
        parser.error(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    merged = {**(PRESETS.get(preset, {})), **values, "preset": preset}
    return args.command, Config(**merged)


def to_json(cfg: Config) -> str:
    return json.dumps(dataclasses.asdict(cfg), indent=2)
