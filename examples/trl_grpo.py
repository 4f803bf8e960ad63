"""GRPO with TRL on multi-turn vlm_envs episodes, on CPU with a tiny model built in code.

    pip install -e ".[train]" trl datasets
    python examples/trl_grpo.py --env-id gym_cards/NumberLine-v0 --max-steps 2
    python examples/trl_grpo.py --env-url http://127.0.0.1:8000 --max-steps 2   # the env served through OpenEnv
    VLM_ENVS_TOKEN=... python examples/trl_grpo.py --env-url http://envhost:8000   # a server with a token

With ``--env-url`` the episodes are played on a server (``python -m vlm_envs serve --env ID``, the
"serve" extra) through OpenEnv's WebSocket client (:class:`vlm_envs.remote.RemoteEnv`): the trainer
process needs no env dependencies, and the rollouts are the same as with the local env.

How it plugs in: TRL's ``GRPOTrainer(rollout_func=...)`` (experimental in TRL 1.16) hands us the
prompts of a batch; :class:`EpisodeRollout` plays one whole episode per prompt with the model being
trained: the model writes an answer (after the fixed prefix ``{"action": "``, so that even an
untrained model produces parseable answers and a group's rewards differ), the env's parser
(``vlm_envs.TextActions``) turns it into an action, the env's reply (reward and the new state) is appended as tokens the loss ignores
(``env_mask`` 0), and the model answers again, until the episode ends or ``--max-turns``. The
episode's return is the GRPO reward; the ``num_generations`` episodes of a group start from the
same seed, so the group baseline compares answers to the same deal.

**Limitation (TRL 1.16): text only.** On the ``rollout_func`` path the trainer drops images
(``_generate`` sets ``images = None``; only a dataset's ``image`` column is restored for the loss
forward pass), so a frame that changes every turn cannot reach the policy-gradient forward pass.
This example therefore uses ``text_mode="full"`` (the whole state in words) and a causal LM;
image observations need a trainer that re-feeds each turn's frame (``baselines/vlm_ppo``).
"""

from __future__ import annotations

import argparse
import os
import tempfile

import gymnasium as gym
import numpy as np
import torch

import vlm_envs

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is experimental in TRL; we know


# The assistant's turn starts with this (part of the prompt, not generated): the model only writes
# the action's value. An untrained model never writes valid JSON by itself, and then every episode
# of a group plays the same seeded fallback moves, so all rewards tie and GRPO has no signal.
ANSWER_PREFIX = ' {"action": "'


def user_turn(env: gym.Env, state: str, feedback: str = "") -> str:
    """One user message (feedback on the last action, the state in words, the task prompt) and the answer prefix.

    ``state`` is ``obs["text"]`` of a ``text_mode="full"`` env: the whole state in words, so the
    task prompt is the game's template alone.
    """
    task = vlm_envs.build_prompt(env.unwrapped.prompt_task, "", cot=False)
    return f"USER: {feedback}State: {state}\n{task}\nASSISTANT:{ANSWER_PREFIX}"


def env_maker(env_id: str, env_url: str | None, env_token: str | None = None):
    """A text-action env whose ``obs["text"]`` is the whole state: local, or a session on ``env_url``."""
    if env_url:
        from vlm_envs.remote import RemoteEnv

        return lambda: RemoteEnv(env_url, env_id=env_id, env_kwargs={"text_mode": "full"}, token=env_token)
    return lambda: vlm_envs.TextActions(gym.make(env_id, text_mode="full"))


def build_tiny_lm(seed: int = 0):
    """A 2-layer Llama (~0.5M parameters) and the byte-level BPE trained in code on the package's prompts."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from baselines.vlm_ppo.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


class EpisodeRollout:
    """``rollout_func(prompts, trainer)``: one multi-turn episode per prompt, tokens and masks for GRPO."""

    def __init__(self, make_env, seed_of_prompt: dict[str, int], max_turns: int = 4, max_new_tokens: int = 8,
                 temperature: float = 1.0):
        self.make_env, self.seed_of_prompt = make_env, seed_of_prompt
        self.max_turns, self.max_new_tokens, self.temperature = max_turns, max_new_tokens, temperature
        self.episodes: list[dict] = []  # every episode played, for inspection

    def __call__(self, prompts: list[str], trainer) -> dict[str, list]:
        model = trainer.accelerator.unwrap_model(trainer.model)
        tokenizer = trainer.processing_class
        out: dict[str, list] = {k: [] for k in ("prompt_ids", "completion_ids", "logprobs", "env_mask", "env_return", "env_success")}
        for prompt in prompts:
            episode = self.play(model, tokenizer, prompt)
            for key in out:
                out[key].append(episode[key])
            self.episodes.append(episode)
        return out

    @torch.no_grad()
    def play(self, model, tokenizer, prompt: str) -> dict:
        env = self.make_env()
        env.reset(seed=self.seed_of_prompt[prompt])
        prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        completion, mask, logprobs, texts = [], [], [], []
        total, success = 0.0, False
        suppress = [i for i in tokenizer.all_special_ids if i != tokenizer.eos_token_id]
        for _ in range(self.max_turns):
            input_ids = torch.tensor([prompt_ids + completion])
            gen = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=True,
                                 temperature=self.temperature, max_new_tokens=self.max_new_tokens,
                                 suppress_tokens=suppress, output_scores=True, return_dict_in_generate=True,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            new = gen.sequences[0, input_ids.shape[1]:]
            scores = model.compute_transition_scores(gen.sequences, gen.scores, normalize_logits=True)[0]
            completion += new.tolist()
            mask += [1] * len(new)
            logprobs += scores.tolist()
            text = tokenizer.decode(new, skip_special_tokens=True)
            texts.append(text)
            obs, reward, terminated, truncated, info = env.step(ANSWER_PREFIX + text)
            total += float(reward)
            success = bool(info.get("success", False))
            if terminated or truncated:
                break
            parsed = "" if info["parse_ok"] else f"(could not parse your answer: {info['parse_error']}) "
            turn = user_turn(env, obs["text"], f"{parsed}Reward {float(reward):g}. ")
            feedback = tokenizer(f" {turn}", add_special_tokens=False)["input_ids"]
            completion += feedback
            mask += [0] * len(feedback)
            logprobs += [0.0] * len(feedback)
        env.close()
        return {"prompt_ids": prompt_ids, "completion_ids": completion, "logprobs": logprobs, "env_mask": mask,
                "env_return": total, "env_success": success, "texts": texts}


def env_return(prompts, completions, env_return, **kwargs) -> list[float]:
    """GRPO reward: the episode's return, computed by the env during the rollout."""
    return [float(r) for r in env_return]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env-id", default="gym_cards/NumberLine-v0")
    parser.add_argument("--env-url", default=None, help="play on this vlm_envs server (python -m vlm_envs serve) instead")
    parser.add_argument("--env-token", default=os.environ.get("VLM_ENVS_TOKEN"),
                        help="the server's token (default: $VLM_ENVS_TOKEN; on the command line every local user sees it)")
    parser.add_argument("--episodes", type=int, default=8, help="distinct starting seeds in the dataset")
    parser.add_argument("--num-generations", type=int, default=4, help="episodes per seed (the GRPO group)")
    parser.add_argument("--max-steps", type=int, default=2, help="GRPO optimizer steps")
    parser.add_argument("--max-turns", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=8, help="per turn (the action's value)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default=None)
    args = parser.parse_args(argv)

    try:
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer
    except ImportError as err:
        raise SystemExit(f"{err}: run `pip install trl datasets` (and the train extra)") from err

    model, tokenizer = build_tiny_lm(args.seed)
    make_env = env_maker(args.env_id, args.env_url, args.env_token)
    seed_of_prompt: dict[str, int] = {}
    for seed in range(args.seed, args.seed + args.episodes):
        env = make_env()
        obs, _ = env.reset(seed=seed)
        seed_of_prompt.setdefault(user_turn(env, obs["text"]), seed)  # equal first states: either seed deals the same start
        env.close()
    dataset = Dataset.from_dict({"prompt": list(seed_of_prompt)})
    rollout = EpisodeRollout(make_env, seed_of_prompt, args.max_turns, args.max_new_tokens)
    config = GRPOConfig(
        output_dir=args.output_dir or tempfile.mkdtemp(prefix="grpo-"), use_cpu=True, seed=args.seed,
        per_device_train_batch_size=args.num_generations, num_generations=args.num_generations,
        max_steps=args.max_steps, learning_rate=1e-4, beta=0.0, max_completion_length=4096,
        logging_steps=1, save_strategy="no", report_to="none", bf16=False, dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=env_return, args=config, train_dataset=dataset,
                          processing_class=tokenizer, rollout_func=rollout)
    trainer.train()
    returns = [e["env_return"] for e in rollout.episodes]
    summary = {"episodes": len(rollout.episodes), "mean_return": float(np.mean(returns)),
               "success_rate": float(np.mean([e["env_success"] for e in rollout.episodes])),
               "log": [{k: v for k, v in row.items() if k in ("step", "loss", "grad_norm", "reward", "reward_std")}
                       for row in trainer.state.log_history]}
    print(summary)
    return summary


if __name__ == "__main__":
    main()
