"""PPO (and the critic-free GRPO, RLOO, GiGPO) for a VLM policy, read top to bottom: setup, then per
update rollout, scoring, advantages (GAE, or group-relative), update, log.

``python -m baselines.vlm_ppo ppo --model runs/numberline/sft ...``; several processes with
``accelerate launch --multi_gpu --num_processes N -m baselines.vlm_ppo ppo ...`` (each process runs
its own envs and rollout on its own seeds; accelerate's data parallelism averages the gradients;
held-out episodes are split over the processes and every logged number covers all of them).
"""

from __future__ import annotations

import collections
import contextlib
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from baselines.vlm_ppo.algo import compute_gae, cosine_schedule, group_advantages, kl_to_reference, ppo_losses, tis_weights
from baselines.vlm_ppo.checkpoint import (
    checkpoint_algo,
    checkpoint_dir,
    latest_checkpoint,
    load_training_state,
    save_checkpoint,
)
from baselines.vlm_ppo.config import CRITIC_FREE, Config, to_json
from baselines.vlm_ppo.device import check_training_dtype, make_accelerator
from baselines.vlm_ppo.encoding import Encoder
from baselines.vlm_ppo.envs import TrainingEnvs
from baselines.vlm_ppo.evaluation import evaluate
from baselines.vlm_ppo.logger import MetricsLogger
from baselines.vlm_ppo.policy import ActorCritic, load_policy, train_without_dropout
from baselines.vlm_ppo.rollout import (
    EpisodeStats,
    FormatFailures,
    Rollout,
    collect_group_rollout,
    collect_rollout,
    minibatches,
    score_rollout,
)
from vlm_envs.evaluation.seeds import check_eval_seeds


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_model(cfg: Config) -> str:
    """A built-in model name → its folder ``output_dir/NAME-base``, built there once; anything else as given.

    ``tiny``: the embedded tiny LLaVA (for ALFWorld the build with its vocabulary and context,
    ``tiny.ALFWORLD_SPEC``); ``smollm2-vlm``: SmolLM2-135M-Instruct in a SmolVLM-shaped model
    (:mod:`baselines.vlm_ppo.smollm2`). Processes started together build it once: the first to take
    the lock builds into a side folder and renames it into place (a killed build leaves no half
    model), the others wait and load it.
    """
    build = _builder(cfg)
    if build is None:
        return cfg.model
    from filelock import FileLock

    path = Path(cfg.output_dir) / f"{cfg.model}-base"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock"):
        if not path.exists():
            partial = path.with_name(path.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            build(partial)
            partial.rename(path)
    return str(path)


def _builder(cfg: Config):
    """The function building ``cfg.model`` into a folder, if it names a built-in model."""
    if cfg.model == "tiny":
        from baselines.vlm_ppo.tiny import ALFWORLD_SPEC, build_tiny_llava

        return lambda path: build_tiny_llava(path, ALFWORLD_SPEC if cfg.env_id.startswith("alfworld/") else None)
    if cfg.model == "smollm2-vlm":
        from baselines.vlm_ppo.smollm2 import build_smollm2_vlm

        return build_smollm2_vlm
    return None


def check_config(cfg: Config) -> None:
    """Refuse, at start, combinations that would crash late or silently waste the run."""
    check_training_dtype(cfg.dtype)
    if cfg.dtype != "float32" and cfg.lora_r == 0:
        raise ValueError(f"dtype={cfg.dtype} with full fine-tuning (lora_r=0) keeps no fp32 master copy: updates of "
                         f"lr {cfg.lr:g} round away in {cfg.dtype} weights. Use --lora-r > 0 (adapters stay fp32) "
                         f"or --dtype float32")
    if cfg.kl_coef > 0 and cfg.lora_r == 0:
        raise ValueError("--kl-coef needs LoRA (--lora-r > 0): the initial policy is the model with its adapter off")
    if cfg.minibatch_size > cfg.num_steps * cfg.num_envs:
        raise ValueError(f"minibatch_size={cfg.minibatch_size} is larger than a rollout "
                         f"(num_steps*num_envs={cfg.num_steps * cfg.num_envs}): no update would ever run")
    if cfg.temperature <= 0:
        raise ValueError(f"temperature must be > 0 (log-probs use softmax(z/T)), got {cfg.temperature}")
    if cfg.tis_cap is not None and (cfg.tis_cap < 0 or 0 < cfg.tis_cap < 1):
        raise ValueError(f"tis_cap must be 0 (off) or >= 1 (a cap below 1 would down-weight even on-policy samples), "
                         f"got {cfg.tis_cap}")
    if cfg.keep_format_failures and cfg.missing_action_key != "mask":
        raise ValueError("--keep-format-failures applies to --missing-action-key mask (last5 keeps every answer)")
    check_eval_seeds(cfg.eval_seed, max(cfg.eval_episodes, cfg.eval_greedy_episodes))
    check_groups(cfg)


def check_groups(cfg: Config) -> None:
    if cfg.algo not in CRITIC_FREE:
        if cfg.group_size != 1:
            raise ValueError(f"group_size={cfg.group_size} applies to the critic-free algorithms {CRITIC_FREE}; "
                             f"algo={cfg.algo} steps every env on its own (use --group-size 1)")
        return
    if cfg.group_size < 2:
        raise ValueError(f"algo={cfg.algo} needs group_size >= 2: an episode alone in its group has no baseline "
                         f"(its advantage is 0), got group_size={cfg.group_size}")
    if cfg.num_envs % cfg.group_size:
        raise ValueError(f"num_envs={cfg.num_envs} must be a multiple of group_size={cfg.group_size}: a group's "
                         f"envs stay in one process")
    if not (math.isfinite(cfg.step_adv_weight) and cfg.step_adv_weight >= 0):
        raise ValueError(f"step_adv_weight must be a finite number >= 0 (the weight of GiGPO's step-level "
                         f"advantage), got {cfg.step_adv_weight}")


def format_failures(cfg: Config) -> FormatFailures | None:
    """Which key-less answers ``--keep-format-failures`` keeps in the policy loss (None: off)."""
    return FormatFailures(penalised=cfg.on_parse_failure == "penalty") if cfg.keep_format_failures else None


def tis_cap(cfg: Config) -> float:
    """The truncated-importance-sampling cap in effect: ``--tis-cap``, or by dtype when unset (0: off)."""
    if cfg.tis_cap is not None:
        return cfg.tis_cap
    return 0.0 if cfg.dtype == "float32" else 2.0


def build_policy(cfg: Config, checkpoint: Path | None = None) -> ActorCritic:
    """The actor-critic of ``cfg.model`` (or of a checkpoint's weights), LoRA-wrapped if asked."""
    full_weights = checkpoint is not None and cfg.lora_r == 0
    processor, vlm = load_policy(
        str(checkpoint / "model") if full_weights else resolve_model(cfg), dtype=cfg.dtype, lora_r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, train_vision=cfg.train_vision,
        adapter_path=str(checkpoint / "model") if checkpoint is not None and not full_weights else None)
    if cfg.gradient_checkpointing:
        vlm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        vlm.enable_input_require_grads()
    encoder = Encoder(processor, vlm.config, cfg.conv_template, cfg.image_mode)
    return ActorCritic(vlm, encoder, temperature=cfg.temperature, thought_coef=cfg.thought_coef,
                       value_head=cfg.algo not in CRITIC_FREE)


@dataclass
class Run:
    """Everything one process holds during training."""

    cfg: Config
    accelerator: object
    model: torch.nn.Module  # the accelerate-prepared ActorCritic (DDP-wrapped with several processes)
    policy: ActorCritic  # the same module unwrapped
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    envs: TrainingEnvs
    episodes: EpisodeStats
    recent: collections.deque
    logger: MetricsLogger
    start_update: int = 0
    global_step: int = 0


def setup(cfg: Config) -> Run:
    check_config(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # accelerate's accumulation state: ppo_update marks each window's end with sync_gradients
    accelerator = make_accelerator(gradient_accumulation_steps=cfg.grad_accum_steps)
    if accelerator.gradient_accumulation_steps != cfg.grad_accum_steps:
        raise ValueError(f"accelerate accumulates over {accelerator.gradient_accumulation_steps} mini-batches but "
                         f"grad_accum_steps={cfg.grad_accum_steps}: unset ACCELERATE_GRADIENT_ACCUMULATION_STEPS "
                         "(and a DeepSpeed config's gradient_accumulation_steps) or make it equal --grad-accum-steps")
    check_parallelism(accelerator)
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ppo_config.json").write_text(to_json(cfg))
    ckpt = latest_checkpoint(out_dir) if cfg.resume else None
    if cfg.resume and ckpt is None:
        raise FileNotFoundError(f"--resume: no checkpoint under {out_dir / 'checkpoints'}")
    if ckpt is not None and checkpoint_algo(ckpt) != cfg.algo:
        raise ValueError(f"--resume: the checkpoint was written by algo={checkpoint_algo(ckpt)}, this run is "
                         f"algo={cfg.algo}")
    seed_everything(cfg.seed + 1000 * accelerator.process_index)  # distinct streams per process
    policy = build_policy(cfg, ckpt).to(accelerator.device)
    envs = TrainingEnvs(cfg, accelerator.process_index)
    frozen = freeze_unreachable(policy, envs, accelerator)
    if frozen:
        accelerator.print(f"frozen {len(frozen)} trainable parameters that no loss reaches: {', '.join(frozen)}")
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-7, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_schedule(cfg.num_updates, cfg.lr, cfg.end_lr))
    model, optimizer = accelerator.prepare(policy, optimizer)  # the scheduler is stepped by hand, once per update
    run = Run(cfg, accelerator, model, accelerator.unwrap_model(model), optimizer, scheduler, envs,
              EpisodeStats(np.zeros(cfg.num_envs), np.zeros(cfg.num_envs, dtype=int)),
              collections.deque(maxlen=cfg.success_window), None)
    if ckpt is None:
        envs.reset()
        run.logger = MetricsLogger(out_dir, enabled=accelerator.is_main_process)
        return run
    state = load_training_state(ckpt, accelerator.process_index, run.policy, optimizer, scheduler)
    envs.restore(state["envs"])
    run.episodes = EpisodeStats(np.asarray(state["ep_return"], dtype=float), np.asarray(state["ep_len"], dtype=int))
    run.recent.extend(tuple(r) for r in state["recent"])
    run.start_update, run.global_step = state["update"] + 1, state["global_step"]
    run.logger = MetricsLogger(out_dir, enabled=accelerator.is_main_process, resume_after=state["update"])
    return run


def check_parallelism(accelerator) -> None:
    """Refuse, at start, the accelerate back-ends this trainer was never run with.

    Plain data parallelism (``accelerate launch --multi_gpu``) is tested; DeepSpeed and FSDP are not.
    """
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        stage = accelerator.state.deepspeed_plugin.zero_stage
        raise ValueError(
            f"DeepSpeed (ZeRO-{stage}) is not supported by this trainer: untested. ZeRO-1/2 partition the optimizer "
            f"state over the processes, which a checkpoint (one optimizer.pt, loaded weights_only) cannot hold; "
            f"ZeRO-3 also partitions the weights that generate, the reference-mode vision tower, the weight digest "
            f"and save_pretrained read whole. Launch plain data parallelism instead: accelerate launch --multi_gpu "
            f"--num_processes N -m baselines.vlm_ppo ppo ... (docs/training.md, \"Several processes\")")
    if accelerator.distributed_type == DistributedType.FSDP:
        raise ValueError(
            "FSDP is not supported by this trainer: untested. It shards the weights that generate, the reference-mode "
            "vision tower, the weight digest and save_pretrained read whole. Launch plain data parallelism instead: "
            "accelerate launch --multi_gpu --num_processes N -m baselines.vlm_ppo ppo ... (docs/training.md, "
            "\"Several processes\")")


def freeze_unreachable(policy: ActorCritic, envs: TrainingEnvs, accelerator) -> list[str]:
    """Freeze the trainable parameters that no loss reaches; returns their names.

    Data parallelism waits for a gradient of every trainable parameter in every backward pass, so
    one outside the loss's graph stops it ("Expected to have finished reduction in the prior
    iteration"): the vision layers above LLaVA's ``vision_feature_layer`` and the tower's
    post-layernorm with ``--train-vision``, LLaVA-NeXT's ``image_newline`` in reference mode. One
    backward pass on a blank observation finds them: what reaches the policy's log-probs and the
    value is fixed by the model's structure, not by the input. A parameter is frozen only if no
    process reached it, so every process keeps the same trainable set. Runs under its own RNG.
    """
    space = envs.envs.single_observation_space["image"]
    probe = policy.encoder.encode([envs.prompt_for("")], [np.zeros(space.shape, dtype=np.uint8)])
    tokenizer = policy.encoder.tokenizer
    answer = tokenizer(' {"action": "1"}', add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    trainable = {name: p for name, p in policy.named_parameters() if p.requires_grad}
    device = accelerator.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        out = policy(probe, [answer], [None])
        (out.token_logprobs.sum() + (0.0 if out.value is None else out.value.sum())).backward()
    missed = [name for name, p in trainable.items() if p.grad is None]
    for p in trainable.values():
        p.grad = None
    from accelerate.utils import gather_object

    unreached = set.intersection(*(set(names) for names in gather_object([missed])))
    for name in unreached:
        trainable[name].requires_grad_(False)
    return sorted(unreached)


def train_ppo(cfg: Config) -> dict[str, float]:
    """The main loop. Returns the last logged metrics."""
    from tqdm.auto import tqdm

    run = setup(cfg)
    policy = run.policy
    if run.start_update == 0 and cfg.eval_every:
        run.logger.log(-1, run.global_step, held_out(run))
    t_start = time.time()
    bar = tqdm(range(run.start_update, cfg.num_updates), desc="ppo", initial=run.start_update,
               total=cfg.num_updates, disable=not run.accelerator.is_main_process)
    for update in bar:
        # 1. rollout: sample answers and step the envs (no scoring pass yet)
        t0 = time.time()
        if cfg.algo in CRITIC_FREE:  # whole episodes, until the run has taken PPO's env steps so far
            budget = (update + 1) * cfg.num_steps * cfg.num_envs - run.global_step
            rollout = collect_group_rollout(policy, run.envs, run.episodes, budget, cfg.max_new_tokens,
                                            cfg.missing_action_key, format_failures(cfg))
        else:
            rollout = collect_rollout(policy, run.envs, run.episodes, cfg.num_steps, cfg.max_new_tokens,
                                      cfg.missing_action_key, cfg.bootstrap_on_truncation, format_failures(cfg))
        run.recent.extend(run.episodes.finished)
        run.episodes.finished = []
        run.global_step += rollout.num_steps * rollout.num_envs
        rollout_s = time.time() - t0

        # 2. behaviour log-probs (and values), in epoch 0's mini-batches; advantages
        t1 = time.time()
        order = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 1000 * run.accelerator.process_index + update)
        epochs = [minibatches(len(rollout.answers), cfg.minibatch_size, order) for _ in range(cfg.ppo_epochs)]
        if cfg.algo in CRITIC_FREE:
            epochs = as_many_batches_as_every_process(run.accelerator, epochs)
        if not epochs[0]:
            run.accelerator.print(f"update {update}: no full mini-batch of {cfg.minibatch_size} in this rollout "
                                  f"(or in another process's), so it trains nothing; lower --minibatch-size")
        score_rollout(policy, rollout, epochs[0], with_reference=cfg.kl_coef > 0)
        advantages, returns = (critic_free_advantages(cfg, rollout), None) if cfg.algo in CRITIC_FREE else gae(run, rollout)

        # 3. PPO epochs
        stats = ppo_update(run, rollout, advantages.flatten(), None if returns is None else returns.flatten(), epochs)
        run.scheduler.step()
        update_s = time.time() - t1

        # 4. log, evaluate, checkpoint
        metrics = {**rollout_metrics(run, rollout, advantages, returns, rollout_s, update_s), **stats}
        del rollout  # its recorded tower outputs, on the device, go before evaluation and the next collection
        metrics = over_processes(run.accelerator, metrics)
        # a critic-free run stops once it has taken PPO's env steps: whole episodes may overshoot an update's share
        last = update == cfg.num_updates - 1 or (cfg.algo in CRITIC_FREE and on_main_process(
            run.accelerator, run.global_step >= cfg.num_updates * cfg.num_steps * cfg.num_envs))
        out_of_time = cfg.time_limit_min > 0 and on_main_process(
            run.accelerator, time.time() - t_start > 60 * cfg.time_limit_min)
        if cfg.eval_every and ((update + 1) % cfg.eval_every == 0 or last or out_of_time):
            metrics.update(held_out(run))
        run.logger.log(update, run.global_step, metrics)
        bar.set_postfix(train=f"{metrics['charts/train_success']:.2f}",
                        greedy=f"{metrics.get('eval/greedy_success', float('nan')):.2f}")
        if (cfg.save_every and (update + 1) % cfg.save_every == 0) or last or out_of_time:
            save_checkpoint(checkpoint_dir(cfg.output_dir, update), run.accelerator, policy, run.optimizer,
                            run.scheduler, trainer_state(run, update))
        if out_of_time:
            print(f"time limit of {cfg.time_limit_min} min reached after update {update}")
        if out_of_time or last:
            break
    run.logger.close()
    run.envs.close()
    return run.logger.last


def as_many_batches_as_every_process(accelerator, epochs: list[list[list[int]]]) -> list[list[list[int]]]:
    """Each epoch cut to the fewest mini-batches any process has. Group rollouts differ in size
    between processes, but data parallelism synchronises every backward pass, so all must take as
    many; the steps left out are drawn afresh each epoch, as the remainder is."""
    from accelerate.utils import gather_object

    fewest = min(gather_object([len(epochs[0])]))
    return [batches[:fewest] for batches in epochs]


def gae(run: Run, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's advantages and returns: GAE on the scored values, bootstrapped from the current observations."""
    cfg, policy = run.cfg, run.policy
    with torch.no_grad():
        next_value = policy.get_value(policy.encoder.encode_observations(run.envs.obs, run.envs.prompt_for))
    return compute_gae(rollout.rewards, rollout.values, rollout.terminated, rollout.truncated, next_value.float().cpu(),
                       rollout.final_values, cfg.gamma, cfg.gae_lambda, cfg.bootstrap_on_truncation)


def critic_free_advantages(cfg: Config, rollout: Rollout) -> torch.Tensor:
    """The group-relative advantage of every step of a group rollout (its one column)."""
    anchor = None
    if cfg.algo == "gigpo":
        if None in rollout.state_keys:
            raise ValueError(f"algo=gigpo groups steps by info['state_key'], which {cfg.env_id} did not give "
                             f"(the trainer makes its envs with oracle_labels=True; vlm_envs.core.labels)")
        ids = {key: n for n, key in enumerate(dict.fromkeys(rollout.state_keys))}
        anchor = torch.tensor([ids[key] for key in rollout.state_keys])
    ends = (rollout.terminated | rollout.truncated)[:, 0]
    return group_advantages(rollout.rewards[:, 0], ends, torch.tensor(rollout.groups), cfg.gamma,
                            baseline="leave_one_out" if cfg.algo == "rloo" else "mean", divide_by_std=cfg.adv_std,
                            step_weight=cfg.step_adv_weight if cfg.algo == "gigpo" else 0.0, anchor=anchor)[:, None]


def ppo_update(run: Run, rollout: Rollout, advantages: torch.Tensor, returns: torch.Tensor | None,
               epochs: list[list[list[int]]]) -> dict[str, float]:
    """``len(epochs)`` passes of clipped PPO; one optimizer step per window of ``grad_accum_steps`` mini-batches.

    ``returns`` None: no value loss (a critic-free algorithm, whose advantages come normalised
    within groups, so ``--norm-adv`` is not applied either).

    Windows go through accelerate's accumulation state: gradients are synchronised, clipped and
    stepped on a window's last mini-batch only (``accelerator.sync_gradients``), which is also what
    tells a DeepSpeed engine where a window ends. An epoch's last, shorter window is stepped too,
    its losses averaged over its own size, so nothing carries into the next update.
    """
    cfg, policy, accelerator = run.cfg, run.policy, run.accelerator
    if cfg.norm_adv and returns is not None:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-5)
    old_logp, old_values = rollout.logprobs.flatten(), rollout.values.flatten()
    valid = rollout.policy_valid.flatten()
    cap = tis_cap(cfg)
    is_weight = tis_weights(old_logp, rollout.sampled_logprobs.flatten(), cap) if cap > 0 else None
    value_params = [] if policy.value_head is None else list(policy.value_head.parameters())
    policy_params = [p for p in policy.vlm.parameters() if p.requires_grad]
    stats = collections.defaultdict(list)
    first_step_dev = 0.0  # largest |ratio - 1| before the first optimizer step: 0 up to numerics
    stepped = False
    train_without_dropout(policy)  # as in score_rollout: checkpointing on, dropout off
    for batches in epochs:
        for start in range(0, len(batches), cfg.grad_accum_steps):
            window = batches[start:start + cfg.grad_accum_steps]
            # accelerate divides each loss by its accumulation steps (read now: a later Accelerator(), as
            # training_device() builds, resets that shared state): each window is averaged over its own size
            scale = accelerator.gradient_accumulation_steps / len(window)
            for k, mb in enumerate(window):
                accelerator.sync_gradients = k == len(window) - 1
                with contextlib.nullcontext() if accelerator.sync_gradients else accelerator.no_sync(run.model):
                    out = run.model([rollout.prompts[j] for j in mb], [rollout.answers[j] for j in mb],
                                    [rollout.boundaries[j] for j in mb], with_entropy=cfg.entropy_coef > 0)
                    at = lambda x: None if x is None else x[mb].to(out.logprob.device)  # noqa: E731
                    losses = ppo_losses(out.logprob, at(old_logp), at(advantages), at(valid), out.value,
                                        at(old_values), at(returns), cfg.clip, cfg.ratio_guard, at(is_weight),
                                        value_clip=cfg.value_clip)
                    loss = losses["policy_loss"]
                    if "value_loss" in losses:
                        loss = loss + cfg.vf_coef * losses["value_loss"]
                    if cfg.entropy_coef > 0:
                        losses["entropy"] = out.entropy.mean()
                        loss = loss - cfg.entropy_coef * losses["entropy"]
                    if cfg.kl_coef > 0:
                        losses["kl"] = reference_kl(out, rollout, mb, at(valid))
                        loss = loss + cfg.kl_coef * losses["kl"]
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"non-finite loss: {({k: float(v) for k, v in losses.items()})}")
                    accelerator.backward(loss * scale)
                if not stepped:
                    first_step_dev = max(first_step_dev, float(losses["ratio_dev"]))
                for name, v in losses.items():
                    stats[f"losses/{name}"].append(float(v.detach()))
            if cfg.max_grad_norm > 0:  # each group to its own norm: the value head's cannot shrink the policy's
                for name, group in (("policy", policy_params), ("value", value_params)):
                    if not group:
                        continue
                    norm = accelerator.clip_grad_norm_(group, cfg.max_grad_norm)
                    if norm is not None:  # DeepSpeed clips by its own config (one global norm) and returns None
                        stats[f"losses/grad_norm_{name}"].append(float(norm))
            run.optimizer.step()
            run.optimizer.zero_grad()
            stepped = True
    out = {k: float(np.mean(v)) for k, v in stats.items()}
    out["charts/epoch0_ratio_dev"] = first_step_dev
    if is_weight is not None and valid.any():
        out["charts/tis_weight"] = float(is_weight[valid].mean())
        out["charts/tis_truncated"] = float((is_weight[valid] >= cap).float().mean())
    return out


def reference_kl(out, rollout: Rollout, mb: list[int], valid: torch.Tensor) -> torch.Tensor:
    """Per-token KL to the initial policy over the mini-batch's policy-valid answers."""
    ref = torch.zeros_like(out.token_logprobs)
    for k, j in enumerate(mb):
        ref[k, :len(rollout.answers[j])] = rollout.ref_token_logprobs[j].to(ref.device)
    return kl_to_reference(out.token_logprobs, ref, out.answer_mask & valid[:, None])


def rollout_metrics(run: Run, rollout: Rollout, advantages: torch.Tensor, returns: torch.Tensor | None,
                    rollout_s: float, update_s: float) -> dict:
    done = np.asarray(list(run.recent), dtype=float).reshape(-1, 3)
    steps = rollout.num_steps * rollout.num_envs
    thought = [k or 0 for k in rollout.boundaries]
    gaps = rollout.behaviour_gaps()
    return {
        **(critic_metrics(rollout, returns) if returns is not None else group_metrics(rollout, advantages)),
        "charts/lr": run.scheduler.get_last_lr()[0],
        "charts/env_steps": steps,
        "charts/train_success": done[:, 0].mean() if len(done) else float("nan"),
        "charts/train_return": done[:, 1].mean() if len(done) else float("nan"),
        "charts/episodes_in_window": len(done),
        "charts/parse_fail": rollout.parse_failures / steps,
        "charts/policy_valid": float(rollout.policy_valid.float().mean()),
        "charts/tokens_per_s": rollout.answer_tokens / max(rollout_s, 1e-9),
        "charts/rollout_s": rollout_s,
        "charts/update_s": update_s,
        "charts/answer_tokens": rollout.answer_tokens / steps,
        "charts/thought_tokens": float(np.mean(thought)),
        "charts/thought_logp": float(rollout.thought_logprobs.mean()),
        "charts/action_logp": float(rollout.action_logprobs.mean()),
        "charts/behaviour_logp_gap": float(gaps.mean()) if len(gaps) else float("nan"),
        "charts/behaviour_logp_gap_max": float(gaps.max()) if len(gaps) else float("nan"),
    }


def critic_metrics(rollout: Rollout, returns: torch.Tensor) -> dict:
    return {"charts/value_mean": float(rollout.values.mean()), "charts/return_mean": float(returns.mean())}


def group_metrics(rollout: Rollout, advantages: torch.Tensor) -> dict:
    """How much signal the group comparison found: steps with a zero advantage come from groups whose
    episodes all returned the same; a shared anchor state is one another step of the group also acted in."""
    anchors = collections.Counter(zip(rollout.groups, rollout.state_keys))
    metrics = {"charts/adv_abs_mean": float(advantages.abs().mean()),
               "charts/adv_zero_frac": float((advantages == 0).float().mean()),
               "charts/group_episodes": float((rollout.terminated | rollout.truncated).sum())}
    if None not in rollout.state_keys:
        metrics["charts/anchor_shared_frac"] = float(np.mean([anchors[a] > 1 for a in zip(rollout.groups, rollout.state_keys)]))
    return metrics


def held_out(run: Run) -> dict[str, float]:
    """Greedy (and sampled) held-out evaluation, its episodes split over the processes."""
    metrics = {}
    for mode in ("greedy", "sampled") if run.cfg.eval_sampled else ("greedy",):
        result = evaluate(run.cfg, run.policy, greedy=mode == "greedy", accelerator=run.accelerator)
        metrics.update({f"eval/{mode}_{k}": v for k, v in result.items()})
    return metrics


# How a logged number combines over processes; any other is the mean (every process holds an
# equal-sized rollout and takes the same number of mini-batches).
SUMMED = ("charts/episodes_in_window", "charts/tokens_per_s", "charts/group_episodes", "charts/env_steps")
LARGEST = ("charts/rollout_s", "charts/update_s", "charts/epoch0_ratio_dev", "charts/behaviour_logp_gap_max")
# A mean over some of a process's items, weighted by how many it has (a fraction of equal-sized rollouts
# serves as well as a count); a process with none logs nan, or nothing, and counts for nothing.
WEIGHTED_BY = {"charts/train_success": "charts/episodes_in_window",
               "charts/train_return": "charts/episodes_in_window",
               "charts/behaviour_logp_gap": "charts/policy_valid",
               "charts/tis_weight": "charts/policy_valid",
               "charts/tis_truncated": "charts/policy_valid"}


def over_processes(accelerator, metrics: dict[str, float]) -> dict[str, float]:
    """This update's metrics over every process: per-item statistics over all their items, throughput
    summed, times and maxima the largest process's (the same dict on every process)."""
    from accelerate.utils import gather_object

    every = gather_object([metrics])
    if len(every) == 1:
        return metrics
    out = {}
    for key in dict.fromkeys(key for m in every for key in m):  # a key only some processes log, too
        values = np.array([m.get(key, np.nan) for m in every], dtype=float)
        present = ~np.isnan(values)
        if key in SUMMED:
            out[key] = float(values.sum())
        elif key in LARGEST:
            out[key] = float(values[present].max()) if present.any() else float("nan")
        elif key in WEIGHTED_BY:
            weights = np.array([m[WEIGHTED_BY[key]] for m in every], dtype=float) * present
            total = weights.sum()
            out[key] = float(np.where(present, values, 0.0) @ weights / total) if total else float("nan")
        else:
            out[key] = float(values.mean())
    return out


def on_main_process(accelerator, decision: bool) -> bool:
    """The main process's ``decision``, on every process: each process's own clock could disagree,
    and a process that stops alone leaves the others waiting at their next collective."""
    from accelerate.utils import broadcast_object_list

    return bool(broadcast_object_list([decision])[0])


def trainer_state(run: Run, update: int) -> dict:
    return {"update": update, "algo": run.cfg.algo, "global_step": run.global_step, "envs": run.envs.state(),
            "ep_return": run.episodes.returns.tolist(), "ep_len": run.episodes.lengths.tolist(),
            "recent": [list(r) for r in run.recent]}
