"""Play any environment as the model would: see the frame and the prompt, type the answer.

``python -m vlm_envs play --env gym_cards/Blackjack-v0`` opens a pygame window (``pip install
"vlm-envs[human]"``). Whatever you type goes through the same parser as a model's output
(:class:`vlm_envs.TextActions`, or ALFWorld's command matcher): type ``hit`` (sent as
``{"action": "hit"}``) or a whole model answer such as ``{"thoughts": "...", "action": "hit"}``
(sent as typed; ``--raw`` sends every line as typed). The window shows the parse result, the
action played, the reward, the return and, when the episode ends, success; Enter on an empty line
then deals the next episode.

Keys: Enter sends the line, Backspace deletes, Ctrl+V pastes (where the platform allows),
Esc or closing the window quits. ``--type LINE`` (repeatable) types lines before you do: scripted
demos, and headless tests (``SDL_VIDEODRIVER=dummy``) with ``--exit-after-script``.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import gymnasium as gym
import numpy as np

from vlm_envs.optional import require
from vlm_envs.text.prompts import build_prompt
from vlm_envs.running.wrappers import TextActions

FRAME = 300  # the frame is shown at FRAME x FRAME pixels
PANEL = 560  # width of the text panel on the right
HEIGHT = 600
MARGIN = 10
BACKGROUND, INK, DIM, GOOD, BAD, BOX = (250, 250, 247), (25, 25, 25), (110, 110, 110), (20, 130, 50), (190, 40, 40), (232, 232, 226)


def as_model_text(line: str, raw: bool = False) -> str:
    """What is sent to the parser: the line as typed if ``raw`` or if it already has an ``"action"`` key."""
    if raw or '"action"' in line:
        return line
    return json.dumps({"action": line.strip()})


@dataclass
class PlayState:
    """Everything the window shows; also the record a headless run returns."""

    env_id: str
    seed: int
    episode: int = 0
    typed: str = ""
    episode_return: float = 0.0
    done: bool = False
    lines: list[tuple[str, tuple[int, int, int]]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)


class PlayApp:
    """The pygame window; ``run()`` until Esc, window close, or the scripted lines run out."""

    def __init__(self, env_id: str, seed: int = 0, cot: bool = True, wording: str = "reference", raw: bool = False,
                 on_parse_failure: str = "random", script: Sequence[str] = (), exit_after_script: bool = False,
                 fps: int = 30, **env_kwargs: Any):
        pygame = require("pygame", "human", "python -m vlm_envs play")
        self.pg = pygame
        self.env = TextActions(gym.make(env_id, **env_kwargs), on_parse_failure=on_parse_failure)
        self.task = self.env.unwrapped.prompt_task
        self.cot, self.wording, self.raw, self.fps = cot, wording, raw, fps
        self.state = PlayState(env_id, seed)
        self.exit_after_script = exit_after_script
        self._script = list(script)
        pygame.display.init()  # not pygame.init(): no audio
        pygame.font.init()
        pygame.display.set_caption(f"vlm_envs: {env_id}")
        self.screen = pygame.display.set_mode((FRAME + PANEL + 3 * MARGIN, HEIGHT))
        font_dir = resources.files("vlm_envs") / "assets" / "fonts"
        with resources.as_file(font_dir / "DejaVuSans.ttf") as regular, resources.as_file(font_dir / "DejaVuSans-Bold.ttf") as bold:
            self.font = pygame.font.Font(str(regular), 13)
            self.bold = pygame.font.Font(str(bold), 14)
        pygame.key.start_text_input()
        self._new_episode()

    # -- game --------------------------------------------------------------------------------
    def _new_episode(self) -> None:
        s = self.state
        self.obs, self.info = self.env.reset(seed=s.seed + s.episode)
        s.episode_return, s.done = 0.0, False
        s.lines = [(f"episode {s.episode} (seed {s.seed + s.episode}): type an action and press Enter", DIM)]

    def submit(self, line: str) -> None:
        """Send one typed line through the parser and the env (an empty line after the end: next episode)."""
        s = self.state
        if s.done:
            if line.strip() == "":
                s.episode += 1
                self._new_episode()
            else:
                s.lines.append(("the episode is over: press Enter on an empty line for the next one", DIM))
            return
        if not line.strip():
            return
        text = as_model_text(line, self.raw)
        self.obs, reward, terminated, truncated, self.info = self.env.step(text)
        s.episode_return += float(reward)
        s.done = bool(terminated or truncated)
        action = self.info.get("action", self.info.get("matched_command"))
        names = getattr(self.env.unwrapped, "action_names", ())
        shown = names[action] if isinstance(action, (int, np.integer)) and 0 <= action < len(names) else action
        s.history.append({"episode": s.episode, "typed": line, "sent": text, "parse_ok": bool(self.info["parse_ok"]),
                          "parse_error": self.info["parse_error"], "action": shown, "reward": float(reward),
                          "terminated": bool(terminated), "truncated": bool(truncated),
                          "success": bool(self.info.get("success", False))})
        s.lines = [(f"sent: {text}", DIM)]
        if self.info["parse_ok"]:
            s.lines.append((f"parsed: {shown!r}", GOOD))
        else:
            played = "" if action in (-1, None) else f"; played {shown!r} instead"
            s.lines.append((f"parse failed: {self.info['parse_error']}{played}", BAD))
        s.lines.append((f"reward {float(reward):+g}   return {s.episode_return:+g}", INK))
        if s.done:
            verdict = "success" if self.info.get("success") else "no success"
            s.lines.append((f"episode over ({'terminated' if terminated else 'truncated'}): {verdict}. "
                            "Enter: next episode", GOOD if self.info.get("success") else BAD))

    # -- window ------------------------------------------------------------------------------
    def handle(self, event) -> bool:
        """Apply one pygame event; False means quit."""
        pg, s = self.pg, self.state
        if event.type == pg.QUIT:
            return False
        if event.type == pg.TEXTINPUT:
            s.typed += event.text
        elif event.type == pg.KEYDOWN:
            if event.key == pg.K_ESCAPE:
                return False
            if event.key in (pg.K_RETURN, pg.K_KP_ENTER):
                line, s.typed = s.typed, ""
                self.submit(line)
            elif event.key == pg.K_BACKSPACE:
                s.typed = s.typed[:-1]
            elif event.key == pg.K_v and event.mod & pg.KMOD_CTRL:
                s.typed += self._paste()
        return True

    def _paste(self) -> str:
        try:
            return self.pg.scrap.get_text() or ""
        except Exception:  # noqa: BLE001  (no clipboard on this platform / driver)
            return ""

    def _post_script_line(self) -> None:
        """Type the next scripted line through the event queue: the same path as a keyboard."""
        pg = self.pg
        line = self._script.pop(0)
        if line:
            pg.event.post(pg.event.Event(pg.TEXTINPUT, text=line))
        pg.event.post(pg.event.Event(pg.KEYDOWN, key=pg.K_RETURN, mod=0, unicode="\r", scancode=0))

    def draw(self) -> None:
        pg, s, screen = self.pg, self.state, self.screen
        screen.fill(BACKGROUND)
        frame = np.ascontiguousarray(self.obs["image"])
        surface = pg.surfarray.make_surface(frame.swapaxes(0, 1))
        screen.blit(pg.transform.smoothscale(surface, (FRAME, FRAME)), (MARGIN, MARGIN))
        x, y = FRAME + 2 * MARGIN, MARGIN
        screen.blit(self.bold.render(f"{s.env_id}   episode {s.episode}", True, INK), (x, y))
        y += 24
        prompt = build_prompt(self.task, self.obs["text"], cot=self.cot, wording=self.wording,
                              **self.env.unwrapped.prompt_params)
        bottom = HEIGHT - 130
        for paragraph in prompt.split("\n"):
            for row in textwrap.wrap(paragraph, 78) or [""]:
                if y > bottom - 16:
                    break
                screen.blit(self.font.render(row, True, INK), (x, y))
                y += 16
        y = HEIGHT - 120
        pg.draw.rect(screen, BOX, (MARGIN, y - 4, FRAME + PANEL + MARGIN, 26))
        caret = "_" if (pg.time.get_ticks() // 500) % 2 == 0 else " "
        screen.blit(self.bold.render("> " + s.typed[-90:] + caret, True, INK), (MARGIN + 4, y))
        y += 30
        for text, color in s.lines:
            screen.blit(self.font.render(text[:120], True, color), (MARGIN + 4, y))
            y += 18
        pg.display.flip()

    def run(self, max_frames: int | None = None) -> PlayState:
        clock, frames, running = self.pg.time.Clock(), 0, True
        while running and (max_frames is None or frames < max_frames):
            if self._script and not self.pg.event.peek((self.pg.TEXTINPUT, self.pg.KEYDOWN)):
                self._post_script_line()
            for event in self.pg.event.get():
                running = running and self.handle(event)
            self.draw()
            frames += 1
            if self.exit_after_script and not self._script and not self.pg.event.peek((self.pg.TEXTINPUT, self.pg.KEYDOWN)):
                running = False
            clock.tick(self.fps)
        return self.state

    def screenshot(self, path: str) -> None:
        self.pg.image.save(self.screen, path)

    def close(self) -> None:
        self.env.close()
        self.pg.display.quit()


def play(env_id: str, screenshot: str | None = None, max_frames: int | None = None, **kwargs: Any) -> PlayState:
    """Open the window and play until quit; returns the state with the ``history`` of every step."""
    app = PlayApp(env_id, **kwargs)
    try:
        state = app.run(max_frames)
        if screenshot:
            app.screenshot(screenshot)
    finally:
        app.close()
    return state
