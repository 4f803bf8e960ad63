"""PPO on a vlm_envs card game in one file, in the style of cleanrl's ``ppo.py``.

The policy is a small CNN on the image observation and picks ``Discrete`` actions: the
interface every classic RL library speaks. Needs torch (``pip install "vlm-envs[sb3]"``).

    python examples/cleanrl_ppo.py --env-id gym_cards/NumberLine-v0 --total-timesteps 20000

Vector env: ``gym.make_vec(..., vector_kwargs={"autoreset_mode": SAME_STEP})``, so after a step
that ends an episode the returned observation is already the next episode's first one and the
finished episode's info is in ``infos["final_info"]`` (the classic cleanrl layout; see
docs/vector_envs.md for gymnasium's default next-step mode). Truncation is treated as
termination, as cleanrl does.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import time
from collections import deque
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim
from torch.distributions.categorical import Categorical

import vlm_envs  # noqa: F401  (registers the ids)
from vlm_envs.running.agent_loop import info_item, step_infos


@dataclass
class Args:
    env_id: str = "gym_cards/NumberLine-v0"
    """the id of the environment"""
    seed: int = 1
    """seed of the experiment (python, numpy, torch and the env resets)"""
    total_timesteps: int = 20_000
    """total env steps of the experiment"""
    image_size: int = 64
    """the envs render image_size x image_size frames"""
    learning_rate: float = 2.5e-4
    """the learning rate of the optimizer"""
    num_envs: int = 4
    """the number of parallel game environments"""
    num_steps: int = 128
    """the number of steps to run in each environment per policy rollout"""
    gamma: float = 0.99
    """the discount factor gamma"""
    gae_lambda: float = 0.95
    """the lambda for the general advantage estimation"""
    num_minibatches: int = 4
    """the number of mini-batches"""
    update_epochs: int = 4
    """the K epochs to update the policy"""
    clip_coef: float = 0.2
    """the surrogate clipping coefficient"""
    ent_coef: float = 0.01
    """coefficient of the entropy"""
    vf_coef: float = 0.5
    """coefficient of the value function"""
    max_grad_norm: float = 0.5
    """the maximum norm for the gradient clipping"""
    threads: int = 1
    """torch CPU threads"""

    # computed at start
    batch_size: int = 0
    minibatch_size: int = 0
    num_iterations: int = 0


def parse_args() -> Args:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for f in dataclasses.fields(Args):
        if f.name in ("batch_size", "minibatch_size", "num_iterations"):
            continue
        parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    return Args(**vars(parser.parse_args()))


def layer_init(layer: nn.Module, std: float = np.sqrt(2), bias_const: float = 0.0) -> nn.Module:
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    """Two conv layers and an MLP over the (H, W, 3) uint8 image; actor and critic heads."""

    def __init__(self, envs: gym.vector.VectorEnv):
        super().__init__()
        height, width, _ = envs.single_observation_space["image"].shape
        self.network = nn.Sequential(
            layer_init(nn.Conv2d(3, 16, 8, stride=4)), nn.ReLU(),
            layer_init(nn.Conv2d(16, 32, 4, stride=2)), nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            n_flat = self.network(torch.zeros(1, 3, height, width)).shape[1]
        self.network.append(layer_init(nn.Linear(n_flat, 256)))
        self.network.append(nn.ReLU())
        self.actor = layer_init(nn.Linear(256, envs.single_action_space.n), std=0.01)
        self.critic = layer_init(nn.Linear(256, 1), std=1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images.permute(0, 3, 1, 2).float() / 255.0)

    def get_value(self, images: torch.Tensor) -> torch.Tensor:
        return self.critic(self.features(images))

    def get_action_and_value(self, images: torch.Tensor, action: torch.Tensor | None = None):
        hidden = self.features(images)
        probs = Categorical(logits=self.actor(hidden))
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy(), self.critic(hidden)


def main(args: Args) -> dict:
    args.batch_size = args.num_envs * args.num_steps
    args.minibatch_size = args.batch_size // args.num_minibatches
    args.num_iterations = max(1, args.total_timesteps // args.batch_size)

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = True
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")

    envs = gym.make_vec(
        args.env_id, args.num_envs, vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
        image_size=(args.image_size, args.image_size),
    )
    assert isinstance(envs.single_action_space, gym.spaces.Discrete), "only discrete action space is supported"
    agent = Agent(envs).to(device)
    optimizer = optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)

    image_shape = envs.single_observation_space["image"].shape
    obs = torch.zeros((args.num_steps, args.num_envs, *image_shape), dtype=torch.uint8, device=device)
    actions = torch.zeros((args.num_steps, args.num_envs), device=device)
    logprobs = torch.zeros((args.num_steps, args.num_envs), device=device)
    rewards = torch.zeros((args.num_steps, args.num_envs), device=device)
    dones = torch.zeros((args.num_steps, args.num_envs), device=device)
    values = torch.zeros((args.num_steps, args.num_envs), device=device)

    global_step, start_time = 0, time.time()
    successes: deque[bool] = deque(maxlen=200)
    next_obs, _ = envs.reset(seed=args.seed)
    next_obs = torch.as_tensor(next_obs["image"], device=device)
    next_done = torch.zeros(args.num_envs, device=device)

    for iteration in range(1, args.num_iterations + 1):
        frac = 1.0 - (iteration - 1.0) / args.num_iterations
        optimizer.param_groups[0]["lr"] = frac * args.learning_rate

        for step in range(args.num_steps):
            global_step += args.num_envs
            obs[step], dones[step] = next_obs, next_done
            with torch.no_grad():
                action, logprob, _, value = agent.get_action_and_value(next_obs)
                values[step] = value.flatten()
            actions[step], logprobs[step] = action, logprob

            next_obs_np, reward, terminations, truncations, infos = envs.step(action.cpu().numpy())
            next_done = torch.as_tensor(np.logical_or(terminations, truncations), dtype=torch.float32, device=device)
            rewards[step] = torch.as_tensor(reward, dtype=torch.float32, device=device)
            next_obs = torch.as_tensor(next_obs_np["image"], device=device)
            for i in np.flatnonzero(np.logical_or(terminations, truncations)):  # the finished episodes' own infos
                success = info_item(step_infos(infos, True), "success", i)
                if success is not None:
                    successes.append(bool(success))

        # bootstrap value if not done
        with torch.no_grad():
            next_value = agent.get_value(next_obs).reshape(1, -1)
            advantages = torch.zeros_like(rewards, device=device)
            lastgaelam = 0
            for t in reversed(range(args.num_steps)):
                if t == args.num_steps - 1:
                    nextnonterminal, nextvalues = 1.0 - next_done, next_value
                else:
                    nextnonterminal, nextvalues = 1.0 - dones[t + 1], values[t + 1]
                delta = rewards[t] + args.gamma * nextvalues * nextnonterminal - values[t]
                advantages[t] = lastgaelam = delta + args.gamma * args.gae_lambda * nextnonterminal * lastgaelam
            returns = advantages + values

        b_obs = obs.reshape((-1, *image_shape))
        b_logprobs, b_actions = logprobs.reshape(-1), actions.reshape(-1)
        b_advantages, b_returns = advantages.reshape(-1), returns.reshape(-1)

        # optimize the policy and value network
        b_inds = np.arange(args.batch_size)
        clipfracs = []
        for _ in range(args.update_epochs):
            np.random.shuffle(b_inds)
            for start in range(0, args.batch_size, args.minibatch_size):
                mb_inds = b_inds[start:start + args.minibatch_size]
                _, newlogprob, entropy, newvalue = agent.get_action_and_value(b_obs[mb_inds], b_actions.long()[mb_inds])
                logratio = newlogprob - b_logprobs[mb_inds]
                ratio = logratio.exp()
                with torch.no_grad():
                    approx_kl = ((ratio - 1) - logratio).mean()
                    clipfracs += [((ratio - 1.0).abs() > args.clip_coef).float().mean().item()]
                mb_advantages = b_advantages[mb_inds]
                mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)
                pg_loss = torch.max(-mb_advantages * ratio,
                                    -mb_advantages * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)).mean()
                v_loss = 0.5 * ((newvalue.view(-1) - b_returns[mb_inds]) ** 2).mean()
                loss = pg_loss - args.ent_coef * entropy.mean() + v_loss * args.vf_coef
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                optimizer.step()

        success_rate = 100.0 * np.mean(successes) if successes else float("nan")
        print(f"iteration {iteration}/{args.num_iterations} global_step={global_step} "
              f"charts/success_rate(last {len(successes)} episodes)={success_rate:.1f} "
              f"losses/value_loss={v_loss.item():.3f} losses/policy_loss={pg_loss.item():.3f} "
              f"losses/approx_kl={approx_kl.item():.4f} losses/clipfrac={np.mean(clipfracs):.3f} "
              f"charts/SPS={int(global_step / (time.time() - start_time))}", flush=True)

    envs.close()
    return {"global_step": global_step, "success_rate": success_rate, "episodes": len(successes)}


if __name__ == "__main__":
    main(parse_args())
