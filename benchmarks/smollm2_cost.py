"""What the SmolLM2 VLM (``--model smollm2-vlm``) costs per token on this CPU, by precision and LoRA.

``python benchmarks/smollm2_cost.py [--model DIR] [--rows float32:0 float32:16 bfloat16:16] [--threads 1]``

On ALFWorld prompts as the trainer encodes them (action-only, the chat template, one frame),
through the trainer's own ``ActorCritic``: an update (teacher-forced forward + backward, as in SFT
and PPO) and a scoring pass (forward, no gradient) in ms per sequence token, and ``generate`` for a
batch: the first token (prefill of the prompts) and each further token, in seconds. These are the
numbers the experiment budgets are sized from (benchmarks/experiments.py, ``*-smollm2``). Whether
bf16 pays depends on the CPU: without native bf16 instructions (AVX2 only) it is several times
slower than fp32. ``--model``: a built folder (default: built into a temporary one, ~30-50 s).
"""

from __future__ import annotations

import argparse
import tempfile
import time


def alfworld_prompts(count: int) -> tuple[list[str], list]:
    """Action-only prompts and frames of the first steps of the in-distribution evaluation games."""
    import gymnasium as gym

    import vlm_envs  # noqa: F401  (registers the ids)
    from vlm_envs.text import build_prompt

    env = gym.make("alfworld/ALFWorld-v0", split="eval_in_distribution")
    prompts, frames = [], []
    for game in range(count):
        obs, _ = env.reset(seed=game, options={"game_index": game})
        prompts.append(build_prompt("alfworld", obs["text"], cot=False))
        frames.append(obs["image"])
    env.close()
    return prompts, frames


def measure(model: str, dtype: str, lora_r: int, batch: int, gen_batch: int, new_tokens: int) -> dict:
    import torch

    from baselines.vlm_ppo.config import Config
    from baselines.vlm_ppo.train import build_policy

    policy = build_policy(Config(model=model, conv_template="chat_template", dtype=dtype, lora_r=lora_r,
                                 lora_alpha=2 * max(lora_r, 1), lora_dropout=0.0, temperature=1.0))
    prompts, frames = alfworld_prompts(gen_batch)
    encoded = policy.encoder.encode(prompts, frames)
    answer = policy.encoder.answer_ids(policy.encoder.render(prompts[0]), '{"action": "go to shelf 1"}')
    train, answers = encoded[:batch], [answer] * batch
    tokens = sum(len(e) + len(answer) for e in train)
    policy.train()
    policy(train[:1], answers[:1], [None])  # warm-up: first shapes are slow
    t0 = time.perf_counter()
    out = policy(train, answers, [None] * batch)
    (out.logprob.sum() + out.value.sum()).backward()
    update_ms = 1000 * (time.perf_counter() - t0) / tokens
    with torch.no_grad():
        t0 = time.perf_counter()
        policy(train, answers, [None] * batch)
        score_ms = 1000 * (time.perf_counter() - t0) / tokens
    policy.eval()
    policy.generate(encoded, greedy=True, max_new_tokens=1)  # warm-up (and the frozen tower's one run)
    timings = {}
    for n in (1, new_tokens):
        t0 = time.perf_counter()
        policy.generate(encoded, greedy=True, max_new_tokens=n)
        timings[n] = time.perf_counter() - t0
    return {"dtype": dtype, "lora_r": lora_r, "prompt_tokens": sum(len(e) for e in encoded) / len(encoded),
            "update_ms": update_ms, "score_ms": score_ms, "first_token_s": timings[1],
            "next_token_s": (timings[new_tokens] - timings[1]) / (new_tokens - 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="", help="a built SmolLM2 VLM folder (default: build one)")
    parser.add_argument("--rows", nargs="+", default=["float32:0", "float32:16", "bfloat16:16"],
                        help="DTYPE:LORA_R per row (LoRA r 0: full fine-tuning)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=4, help="sequences per update and scoring pass")
    parser.add_argument("--gen-batch", type=int, default=16, help="prompts per generate call")
    parser.add_argument("--new-tokens", type=int, default=8)
    args = parser.parse_args()
    import torch

    from baselines.vlm_ppo.smollm2 import build_smollm2_vlm

    torch.set_num_threads(args.threads)
    model = args.model or str(build_smollm2_vlm(tempfile.mkdtemp() + "/smollm2-vlm"))
    print(f"{args.threads} thread(s); update and scoring: {args.batch} ALFWorld action-only sequences; "
          f"generate: {args.gen_batch} prompts, greedy\n")
    print("| dtype | LoRA r | prompt tokens | update (fwd+bwd) ms/token | scoring ms/token | "
          "generate: first token s | each further token s |")
    print("|---|---|---|---|---|---|---|")
    for row in args.rows:
        dtype, lora_r = row.split(":")
        r = measure(model, dtype, int(lora_r), args.batch, args.gen_batch, args.new_tokens)
        print(f"| {r['dtype']} | {r['lora_r'] or 'full'} | {r['prompt_tokens']:.0f} | {r['update_ms']:.2f} | "
              f"{r['score_ms']:.2f} | {r['first_token_s']:.1f} | {r['next_token_s']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
