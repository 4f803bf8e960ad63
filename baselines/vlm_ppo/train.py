"""PPO for a VLM policy, read top to bottom: setup, rollout, GAE, update, eval, log, checkpoint.

``python -m baselines.vlm_ppo ppo --model runs/numberline/sft ...``; multi-GPU with
``accelerate launch -m baselines.vlm_ppo ppo ...`` (every process runs its own envs and rollout,
gradients are averaged by accelerate's data parallelism, as in the reference).
"""

from __future__ import annotations

import collections
import hashlib
import pickle
import random
import time
from pathlib import Path

import numpy as np
import torch

from baselines.vlm_ppo.algo import action_logprob, compute_gae, cosine_schedule, ppo_losses
from baselines.vlm_ppo.config import Config, to_json
from baselines.vlm_ppo.envs import final_obs, full_prompt, make_vec_env, prompt_task, step_info
from baselines.vlm_ppo.logger import MetricsLogger
from baselines.vlm_ppo.policy import (
    ActorCritic,
    action_boundary,
    collate,
    encode_prompts,
    generate,
    load_policy,
    suppressed_token_ids,
)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_model(cfg: Config) -> str:
    """``tiny`` → build the embedded model once under ``output_dir/tiny-base``; anything else as given."""
    if cfg.model != "tiny":
        return cfg.model
    from baselines.vlm_ppo.tiny import build_tiny_llava

    path = Path(cfg.output_dir) / "tiny-base"
    if not (path / "config.json").exists():
        build_tiny_llava(path)
    return str(path)


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


# ----------------------------------------------------------------------------------------------
# scoring: the one function that gives log π and V for rollouts (no grad) and updates (grad)
# ----------------------------------------------------------------------------------------------
def score(ac, processor, cfg: Config, prompt_ids, images, gens, boundaries, device):
    """λ-weighted action log-probs (B,), values (B,), mean token entropies (B,) of ``gens``."""
    batch = collate(processor, prompt_ids, images, gens, device)
    l_max = batch.gen_ids.shape[1]
    token_lp, entropy, values = ac(batch.inputs, batch.prompt_len, l_max, batch.gen_ids, cfg.temperature)
    thought = torch.zeros_like(batch.gen_mask, dtype=torch.float32)
    action = torch.zeros_like(thought)
    for i, (k, g) in enumerate(zip(boundaries, gens)):
        if k is not None:
            thought[i, :k] = 1.0
            action[i, k:len(g)] = 1.0
    logp = action_logprob(token_lp, thought, action, cfg.thought_coef)
    mask = batch.gen_mask.float()
    mean_entropy = (entropy * mask).sum(-1) / mask.sum(-1).clamp(min=1.0) if l_max else values * 0
    return logp, values, mean_entropy, (token_lp * thought).sum(-1), (token_lp * action).sum(-1)


def boundaries_of(tokenizer, gens, no_key: str) -> list[int | None]:
    """Per answer: the first action token (see ``policy.action_boundary``), or None (policy-invalid)."""
    out = []
    for g in gens:
        k = action_boundary(tokenizer, g) if g else None
        if k is None and g and no_key == "last5":
            k = max(len(g) - 5, 0)
        out.append(k)
    return out


# ----------------------------------------------------------------------------------------------
# held-out evaluation
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(cfg: Config, vlm, processor, *, greedy: bool, episodes: int | None = None) -> dict[str, float]:
    """Play ``episodes`` episodes on the fixed seeds ``eval_seed + k``; success, return, parse-failure rate.

    Greedy answers are deterministic per observation, so they are decoded once per distinct
    observation and cached (``eval_greedy_episodes`` can then be large at little cost);
    ``start_success`` is the mean success over distinct start observations, each counted once
    (on NumberLine with enough episodes: the exact greedy success over all 30 start states).
    Runs under its own RNG (forked), so evaluating never changes the training run's random stream.
    """
    episodes = episodes or ((cfg.eval_greedy_episodes or cfg.eval_episodes) if greedy else cfg.eval_episodes)
    width = min(episodes, 64 if greedy else max(cfg.num_envs, 8))
    suppress = suppressed_token_ids(processor.tokenizer)
    device = next(vlm.parameters()).device
    was_training = vlm.training
    vlm.eval()
    envs = make_vec_env(cfg, width)
    task = prompt_task(envs)
    results, start_keys = [], []
    cache: dict[str, str] = {}  # greedy: observation key -> answer text
    key_of = lambda text, image: hashlib.sha1(np.ascontiguousarray(image).tobytes() + text.encode()).hexdigest()  # noqa: E731
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.eval_seed)
        for start in range(0, episodes, width):
            obs, _ = envs.reset(seed=[cfg.eval_seed + start + i for i in range(width)])
            first = [key_of(obs["text"][i], obs["image"][i]) for i in range(width)]
            active = np.ones(width, bool)
            ret, length, parse_fail = np.zeros(width), np.zeros(width), np.zeros(width)
            success = np.zeros(width, bool)
            for _ in range(cfg.eval_max_steps):
                idx = np.flatnonzero(active)
                keys = {i: key_of(obs["text"][i], obs["image"][i]) for i in idx}
                if greedy:  # one decode per distinct observation not seen before
                    todo = list({keys[i]: i for i in idx if keys[i] not in cache}.values())
                else:
                    todo = list(idx)
                if todo:
                    texts = [full_prompt(cfg, processor, task, obs["text"][i]) for i in todo]
                    pids = encode_prompts(processor, texts, [obs["image"][i] for i in todo])
                    gens = generate(vlm, processor, pids, [obs["image"][i] for i in todo], greedy=greedy,
                                    temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                                    suppress_ids=suppress, device=device)
                    fresh = {i: processor.tokenizer.decode(g, skip_special_tokens=True) for i, g in zip(todo, gens)}
                    if greedy:
                        cache.update({keys[i]: text for i, text in fresh.items()})
                answers = [""] * width
                for i in idx:
                    answers[i] = cache[keys[i]] if greedy else fresh[i]
                obs, rewards, term, trunc, infos = envs.step(answers)
                for i in idx:
                    done = bool(term[i] or trunc[i])
                    info = step_info(infos, i, done)
                    ret[i] += rewards[i]
                    length[i] += 1
                    parse_fail[i] += not bool(info["parse_ok"])
                    if done:
                        success[i] = bool(info["success"])
                        active[i] = False
                if not active.any():
                    break
            for i in range(min(width, episodes - start)):
                results.append((success[i], ret[i], length[i], parse_fail[i] / max(length[i], 1)))
                start_keys.append(first[i])
    envs.close()
    vlm.train(was_training)
    arr = np.asarray(results, dtype=float)
    per_start = collections.defaultdict(list)
    for k, r in zip(start_keys, arr[:, 0]):
        per_start[k].append(r)
    return {"success": arr[:, 0].mean(), "return": arr[:, 1].mean(), "length": arr[:, 2].mean(),
            "parse_fail": arr[:, 3].mean(), "start_success": float(np.mean([np.mean(v) for v in per_start.values()])),
            "starts": float(len(per_start))}


# ----------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------
def save_checkpoint(cfg, accelerator, ac, processor, optimizer, scheduler, update, state) -> None:
    path = Path(cfg.output_dir) / "checkpoints" / f"update_{update:05d}"
    path.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(ac)
        model.vlm.save_pretrained(path / "model")
        processor.save_pretrained(path / "model")
        torch.save(model.value_head.state_dict(), path / "value_head.pt")
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, path / "optim.pt")
    torch.save({"update": update, "rng": rng_state(), **state}, path / f"state_{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (Path(cfg.output_dir) / "checkpoints" / "latest").write_text(path.name)


def latest_checkpoint(cfg) -> Path | None:
    marker = Path(cfg.output_dir) / "checkpoints" / "latest"
    return marker.parent / marker.read_text().strip() if marker.exists() else None


# ----------------------------------------------------------------------------------------------
# the main loop
# ----------------------------------------------------------------------------------------------
def train_ppo(cfg: Config) -> dict[str, float]:
    from accelerate import Accelerator

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    accelerator = Accelerator(gradient_accumulation_steps=cfg.grad_accum_steps)
    device = accelerator.device
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ppo_config.json").write_text(to_json(cfg))
    ckpt = latest_checkpoint(cfg) if cfg.resume else None
    if cfg.resume and ckpt is None:
        raise FileNotFoundError(f"--resume: no checkpoint under {out_dir / 'checkpoints'}")

    # --- model: one code path for the tiny model, an SFT output or a Hub checkpoint -----------
    seed = cfg.seed + 1000 * accelerator.process_index  # distinct streams per process (bug T13)
    seed_everything(seed)
    base = resolve_model(cfg)
    if ckpt is not None and cfg.lora_r == 0:
        processor, vlm = load_policy(str(ckpt / "model"), dtype=cfg.dtype, train_vision=cfg.train_vision)
    else:
        processor, vlm = load_policy(base, dtype=cfg.dtype, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                     lora_dropout=cfg.lora_dropout, train_vision=cfg.train_vision,
                                     adapter_path=str(ckpt / "model") if ckpt is not None else None)
    if cfg.gradient_checkpointing:
        vlm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        vlm.enable_input_require_grads()
    tokenizer = processor.tokenizer
    suppress = suppressed_token_ids(tokenizer)
    ac = ActorCritic(vlm, suppress)
    if ckpt is not None:
        ac.value_head.load_state_dict(torch.load(ckpt / "value_head.pt"))
    params = [p for p in ac.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-7, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_schedule(cfg.num_updates, cfg.lr, cfg.end_lr))
    ac, optimizer = accelerator.prepare(ac, optimizer)  # the scheduler is stepped by hand, once per update
    policy = accelerator.unwrap_model(ac)

    # --- envs ------------------------------------------------------------------------------------
    envs = make_vec_env(cfg, cfg.num_envs)
    task = prompt_task(envs)
    obs, _ = envs.reset(seed=[seed * 10_000 + i for i in range(cfg.num_envs)])
    ep_return = np.zeros(cfg.num_envs)
    ep_len = np.zeros(cfg.num_envs)
    recent = collections.deque(maxlen=cfg.success_window)  # (success, return, length) of finished episodes
    start_update, global_step = 0, 0
    logger = MetricsLogger(out_dir, enabled=accelerator.is_main_process, resume_after=None)
    if ckpt is not None:
        opt_state = torch.load(ckpt / "optim.pt", weights_only=False)
        optimizer.load_state_dict(opt_state["optimizer"])
        scheduler.load_state_dict(opt_state["scheduler"])
        state = torch.load(ckpt / f"state_{accelerator.process_index}.pt", weights_only=False)
        for i, env in enumerate(pickle.loads(state["envs"])):
            envs.envs[i] = env
        obs, ep_return, ep_len = state["obs"], state["ep_return"], state["ep_len"]
        recent.extend(state["recent"])
        start_update, global_step = state["update"] + 1, state["global_step"]
        set_rng_state(state["rng"])
        logger = MetricsLogger(out_dir, enabled=accelerator.is_main_process, resume_after=state["update"])

    def held_out(update: int) -> dict[str, float]:
        metrics = {}
        if accelerator.is_main_process:
            for mode in ("greedy", "sampled") if cfg.eval_sampled else ("greedy",):
                result = evaluate(cfg, policy.vlm, processor, greedy=mode == "greedy")
                metrics.update({f"eval/{mode}_{k}": v for k, v in result.items()})
        accelerator.wait_for_everyone()
        return metrics

    if start_update == 0 and cfg.eval_every:
        logger.log(-1, global_step, held_out(-1))

    t_start = time.time()
    from tqdm.auto import tqdm

    bar = tqdm(range(start_update, cfg.num_updates), desc="ppo", disable=not accelerator.is_main_process,
               initial=start_update, total=cfg.num_updates)
    for update in bar:
        # ---------------- rollout: sample answers, step the envs, keep every prompt -------------
        t0 = time.time()
        policy.eval()  # no dropout (LoRA included) while collecting (bug T6)
        buf = collections.defaultdict(list)
        gen_tokens = 0
        n_parse_fail = 0
        for _ in range(cfg.num_steps):
            texts = [full_prompt(cfg, processor, task, t) for t in obs["text"]]
            images = [np.array(im) for im in obs["image"]]
            pids = encode_prompts(processor, texts, images)
            gens = generate(policy.vlm, processor, pids, images, greedy=False, temperature=cfg.temperature,
                            max_new_tokens=cfg.max_new_tokens, suppress_ids=suppress, device=device)
            bounds = boundaries_of(tokenizer, gens, cfg.no_key)
            with torch.no_grad():
                logp, values, _, thought_lp, action_lp = score(policy, processor, cfg, pids, images, gens, bounds, device)
            answers = tokenizer.batch_decode(gens, skip_special_tokens=True)
            obs, rewards, term, trunc, infos = envs.step(answers)
            final_v = torch.zeros(cfg.num_envs)
            cut = [i for i in range(cfg.num_envs) if trunc[i] and not term[i]]
            if cut and cfg.bootstrap_on_truncation:  # V(final observation) of truncated episodes (bug T11)
                f_obs = [final_obs(infos, i) for i in cut]
                f_pids = encode_prompts(processor, [full_prompt(cfg, processor, task, o["text"]) for o in f_obs],
                                        [o["image"] for o in f_obs])
                with torch.no_grad():
                    _, f_values, *_ = score(policy, processor, cfg, f_pids, [o["image"] for o in f_obs],
                                            [[] for _ in cut], [None for _ in cut], device)
                final_v[cut] = f_values.float().cpu()
            for i in range(cfg.num_envs):
                done = bool(term[i] or trunc[i])
                info = step_info(infos, i, done)
                n_parse_fail += not bool(info["parse_ok"])
                ep_return[i] += rewards[i]
                ep_len[i] += 1
                if done:
                    recent.append((bool(info["success"]), ep_return[i], ep_len[i]))
                    ep_return[i], ep_len[i] = 0.0, 0
            gen_tokens += sum(len(g) for g in gens)
            buf["prompt_ids"] += pids
            buf["images"] += images
            buf["gens"] += gens
            buf["bounds"] += bounds
            buf["logp"].append(logp.float().cpu())
            buf["values"].append(values.float().cpu())
            buf["thought_lp"].append(thought_lp.float().cpu())
            buf["action_lp"].append(action_lp.float().cpu())
            buf["rewards"].append(torch.as_tensor(rewards, dtype=torch.float32))
            buf["term"].append(torch.as_tensor(term))
            buf["trunc"].append(torch.as_tensor(trunc))
            buf["final_v"].append(final_v)
            global_step += cfg.num_envs
        rollout_time = time.time() - t0

        # ---------------- returns: GAE, bootstrapping from the next observation's value ---------
        with torch.no_grad():
            texts = [full_prompt(cfg, processor, task, t) for t in obs["text"]]
            images = [np.array(im) for im in obs["image"]]
            _, next_value, *_ = score(policy, processor, cfg, encode_prompts(processor, texts, images), images,
                                      [[] for _ in texts], [None for _ in texts], device)
        stack = {k: torch.stack(buf[k]) for k in ("logp", "values", "rewards", "term", "trunc", "final_v")}
        advantages, returns = compute_gae(stack["rewards"], stack["values"], stack["term"], stack["trunc"],
                                          next_value.float().cpu(), stack["final_v"], cfg.gamma, cfg.gae_lambda,
                                          cfg.bootstrap_on_truncation)
        b_logp, b_values = stack["logp"].flatten(), stack["values"].flatten()
        b_adv, b_returns = advantages.flatten(), returns.flatten()
        if cfg.norm_adv:
            b_adv = (b_adv - b_adv.mean()) / (b_adv.std() + 1e-5)
        b_valid = torch.tensor([k is not None for k in buf["bounds"]])

        # ---------------- PPO update ----------------------------------------------------------
        t1 = time.time()
        ac.train()
        n = len(b_logp)
        stats = collections.defaultdict(list)
        for _ in range(cfg.ppo_epochs):
            perm = torch.randperm(n)
            for s in range(0, n - cfg.minibatch_size + 1, cfg.minibatch_size):
                mb = perm[s:s + cfg.minibatch_size].tolist()
                with accelerator.accumulate(ac):
                    new_logp, new_values, entropy, *_ = score(
                        ac, processor, cfg, [buf["prompt_ids"][j] for j in mb], [buf["images"][j] for j in mb],
                        [buf["gens"][j] for j in mb], [buf["bounds"][j] for j in mb], device)
                    to = lambda x: x[mb].to(device)  # noqa: E731
                    losses = ppo_losses(new_logp, to(b_logp), to(b_adv), to(b_valid), new_values.float(),
                                        to(b_values), to(b_returns), cfg.clip, cfg.ratio_guard)
                    loss = losses["policy_loss"] + cfg.vf_coef * losses["value_loss"] - cfg.entropy_coef * entropy.mean()
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"non-finite loss at update {update}: {losses}")
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad()
                for k, v in losses.items():
                    stats[k].append(float(v.detach()))
                stats["entropy"].append(float(entropy.detach().mean()))
        scheduler.step()
        update_time = time.time() - t1

        # ---------------- log, evaluate, checkpoint ----------------------------------------------
        done_eps = np.asarray(list(recent), dtype=float).reshape(-1, 3)
        metrics = {
            "charts/lr": scheduler.get_last_lr()[0],
            "charts/train_success": done_eps[:, 0].mean() if len(done_eps) else float("nan"),
            "charts/train_return": done_eps[:, 1].mean() if len(done_eps) else float("nan"),
            "charts/episodes_in_window": len(done_eps),
            "charts/parse_fail": n_parse_fail / (cfg.num_steps * cfg.num_envs),
            "charts/policy_valid": float(b_valid.float().mean()),
            "charts/tokens_per_s": gen_tokens / max(rollout_time, 1e-9),
            "charts/rollout_s": rollout_time,
            "charts/update_s": update_time,
            "charts/gen_tokens": gen_tokens / (cfg.num_steps * cfg.num_envs),
            "charts/thought_tokens": float(np.mean([k or 0 for k in buf["bounds"]])),
            "charts/thought_logp": float(torch.stack(buf["thought_lp"]).mean()),
            "charts/action_logp": float(torch.stack(buf["action_lp"]).mean()),
            "charts/value_mean": float(b_values.mean()),
            "charts/return_mean": float(b_returns.mean()),
            **{f"losses/{k}": float(np.mean(v)) for k, v in stats.items()},
        }
        last = update == cfg.num_updates - 1
        out_of_time = cfg.time_limit_min > 0 and time.time() - t_start > 60 * cfg.time_limit_min
        if cfg.eval_every and ((update + 1) % cfg.eval_every == 0 or last or out_of_time):
            metrics.update(held_out(update))
        logger.log(update, global_step, metrics)
        bar.set_postfix(train=f"{metrics['charts/train_success']:.2f}",
                        greedy=f"{metrics.get('eval/greedy_success', float('nan')):.2f}")
        if (cfg.save_every and (update + 1) % cfg.save_every == 0) or last or out_of_time:
            state = {"envs": pickle.dumps(list(envs.envs)), "obs": obs, "ep_return": ep_return.copy(),
                     "ep_len": ep_len.copy(), "recent": list(recent), "global_step": global_step}
            save_checkpoint(cfg, accelerator, ac, processor, optimizer, scheduler, update, state)
        if out_of_time:
            print(f"time limit of {cfg.time_limit_min} min reached after update {update}")
            break
    logger.close()
    envs.close()
    return logger.last
