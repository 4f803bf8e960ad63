"""Run any text generator as the policy of a vector env: prompts in, text out, plain records back.

``generate(prompts, images) -> texts`` can be a Hugging Face model, a vLLM / OpenAI-compatible
client, a scripted policy or a human at a prompt; this loop does the rest with the env's own
prompts (:func:`vlm_envs.build_prompt` from ``obs["text"]``) and parser (``TextActions``)::

    import gymnasium as gym, vlm_envs
    from vlm_envs.running.agent_loop import run_agent

    envs = gym.make_vec("gym_cards/NumberLine-v0", 4, wrappers=[vlm_envs.TextActions])
    turns = run_agent(envs, lambda prompts, images: ['{"action": "+"}'] * len(prompts), episodes=20, seed=0)
    ends = [t for t in turns if t.done]      # at least 20: envs finishing on the same step all count
    success_rate = sum(t.success for t in ends) / len(ends)

Only gymnasium, numpy and pillow are imported: no torch.

Autoreset: with gymnasium's default next-step autoreset, the step after an episode ends only
resets that sub-env (its action is ignored). The loop sends ``""`` there and asks the generator
nothing for it, so ``generate`` only ever sees live states. Same-step autoreset
(``vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}``) works too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode

from vlm_envs.text.prompts import Wording, build_prompt, chat_messages

Generate = Callable[[list[Any], list[np.ndarray]], Sequence[str]]


@dataclass
class Turn:
    """One step of one sub-env: what the model saw, what it wrote, what happened.

    ``image`` is the observation image (a ``(H, W, 3)`` uint8 array), or the PNG path it was saved
    to when ``run_agent(..., image_dir=...)`` is given. ``action`` is the parsed action the env
    played (an index into ``action_names`` for card games, the matched command for ALFWorld;
    ``-1``/``None`` when the game did not advance). ``done`` is ``terminated or truncated``;
    ``success`` is the env's ``info["success"]`` after the step (the paper's metric on the
    episode's last turn).
    """

    env_index: int
    episode: int
    step: int
    prompt: Any
    image: np.ndarray | str
    output: str
    action: Any
    parse_ok: bool
    parse_error: str
    reward: float
    terminated: bool
    truncated: bool
    success: bool

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (JSON-serialisable when the image was saved to a file)."""
        record = dataclasses.asdict(self)
        if isinstance(self.image, np.ndarray):
            record["image"] = self.image  # asdict deep-copies arrays; keep the reference
        record["action"] = self.action.item() if isinstance(self.action, np.generic) else self.action
        return record


def info_item(infos: dict, key: str, i: int, default: Any = None) -> Any:
    """Sub-env ``i``'s value of ``key`` in a vector env's merged info dict, or ``default``."""
    if key not in infos:
        return default
    mask = infos.get("_" + key)
    if mask is not None and not mask[i]:
        return default
    value = infos[key][i]
    return value.item() if isinstance(value, np.generic) else value


def step_infos(infos: dict, done: bool) -> dict:
    """The infos that hold a sub-env's own info for the step it just took (read them with :func:`info_item`).

    With same-step autoreset, a sub-env whose episode ended has already been reset: ``infos`` holds
    its new episode's reset info and the finished step's info is under ``infos["final_info"]``.
    """
    return infos["final_info"] if done and "final_info" in infos else infos


def run_agent(
    envs: gym.vector.VectorEnv,
    generate: Generate,
    *,
    episodes: int | None = None,
    steps: int | None = None,
    seed: int | None = None,
    cot: bool = True,
    wording: Wording = "reference",
    chat: bool = False,
    image_dir: str | Path | None = None,
) -> list[Turn]:
    """Play ``generate`` in ``envs`` until ``episodes`` episodes finished or ``steps`` vector steps ran.

    Args:
        envs: a gymnasium vector env (``gym.make_vec``, or :class:`vlm_envs.running.ray_pool.RayVectorEnv`)
            whose sub-envs take text actions: wrap card envs with ``wrappers=[vlm_envs.TextActions]``;
            ALFWorld ids take text already.
        generate: ``generate(prompts, images) -> texts``, one text per prompt, for the sub-envs that
            need an action this step. Prompts are strings, or chat messages with an image slot
            (``vlm_envs.chat_messages``) if ``chat``; images are ``(H, W, 3)`` uint8 arrays.
        episodes: stop once this many episodes (over all sub-envs) have finished.
        steps: stop after this many vector steps. At least one of ``episodes``/``steps`` is needed.
        seed: ``envs.reset(seed=seed)`` (sub-env ``i`` gets ``seed + i``): the same seed and the
            same generator outputs give the same records.
        cot, wording: passed to :func:`vlm_envs.build_prompt`.
        chat: give ``generate`` chat messages instead of strings.
        image_dir: save each turn's image as ``<image_dir>/env<i>_ep<k>_step<t>.png`` and store that path.

    Returns:
        the list of :class:`Turn` records in the order they happened. Episodes still running when
        the loop stops are included (their last turn has ``done == False``).
    """
    if episodes is None and steps is None:
        raise ValueError("give episodes=, steps= or both, or the loop would never stop")
    if not isinstance(envs.single_action_space, spaces.Text):
        raise TypeError(
            f"the sub-envs must take text actions, got {envs.single_action_space}; "
            "make them with gym.make_vec(id, n, wrappers=[vlm_envs.TextActions])"
        )
    autoreset = envs.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
    if autoreset == AutoresetMode.DISABLED:
        raise ValueError("run_agent needs autoreset (next-step or same-step); this vector env has it disabled")
    n = envs.num_envs
    tasks = envs.get_attr("prompt_task")
    prompt_params = envs.get_attr("prompt_params")
    if image_dir is not None:
        image_dir = Path(image_dir)
        image_dir.mkdir(parents=True, exist_ok=True)

    obs, infos = envs.reset(seed=seed)
    resetting = np.zeros(n, dtype=bool)  # next-step autoreset: this step only resets these envs
    episode_ids = list(range(n))  # a global episode counter, so records from different envs never clash
    next_episode = n
    step_in_episode = [0] * n
    turns: list[Turn] = []
    finished = 0
    vector_steps = 0
    while (episodes is None or finished < episodes) and (steps is None or vector_steps < steps):
        live = [i for i in range(n) if not resetting[i]]
        prompts = [build_prompt(tasks[i], obs["text"][i], cot=cot, wording=wording, **prompt_params[i]) for i in live]
        images = [np.asarray(obs["image"][i]) for i in live]
        outputs = list(generate([chat_messages(p) for p in prompts] if chat else prompts, images)) if live else []
        if len(outputs) != len(live):
            raise ValueError(f"generate returned {len(outputs)} texts for {len(live)} prompts")
        actions = [""] * n
        for i, text in zip(live, outputs):
            actions[i] = str(text)
        next_obs, rewards, terminations, truncations, infos = envs.step(tuple(actions))
        vector_steps += 1

        for j, i in enumerate(live):
            done = bool(terminations[i] or truncations[i])
            own = step_infos(infos, done)
            image: np.ndarray | str = images[j]
            if image_dir is not None:
                image = str(image_dir / f"env{i}_ep{episode_ids[i]}_step{step_in_episode[i]}.png")
                _save_png(images[j], image)
            action = info_item(own, "action", i, info_item(own, "matched_command", i))
            turns.append(Turn(
                env_index=i, episode=episode_ids[i], step=step_in_episode[i], prompt=prompts[j], image=image,
                output=outputs[j], action=action, parse_ok=bool(info_item(own, "parse_ok", i, False)),
                parse_error=str(info_item(own, "parse_error", i, "")), reward=float(rewards[i]),
                terminated=bool(terminations[i]), truncated=bool(truncations[i]),
                success=bool(info_item(own, "success", i, False)),
            ))
            step_in_episode[i] += 1
            if done:
                finished += 1
                episode_ids[i], next_episode = next_episode, next_episode + 1
                step_in_episode[i] = 0
        if autoreset == AutoresetMode.NEXT_STEP:
            resetting = terminations | truncations
        obs = next_obs
    return turns


def _save_png(image: np.ndarray, path: str) -> None:
    from PIL import Image

    Image.fromarray(image).save(path)
