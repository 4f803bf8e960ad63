"""Fonts, frame resizing and the pygame window shared by every environment.

Fonts ship as package data (DejaVu, Bitstream Vera licence in ``assets/fonts``) and are loaded
once through ``importlib.resources``, never from the working directory.
"""

from __future__ import annotations

import functools
from importlib import resources

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vlm_envs.optional import require

_FONT_FILES = {False: "DejaVuSans.ttf", True: "DejaVuSans-Bold.ttf"}


@functools.lru_cache(maxsize=None)
def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    """The packaged DejaVu Sans (Bold) font at ``size`` pixels, loaded once."""
    path = resources.files("vlm_envs") / "assets" / "fonts" / _FONT_FILES[bold]
    with resources.as_file(path) as file:
        return ImageFont.truetype(str(file), size)


def to_frame(image: Image.Image | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A new RGB uint8 array of shape ``(H, W, 3)``, resized from the 300x300 layout if needed."""
    height, width = size
    if isinstance(image, np.ndarray):
        if image.shape[:2] == (height, width):
            return image.copy()
        image = Image.fromarray(image)
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    return np.array(image.convert("RGB"), dtype=np.uint8)


@functools.lru_cache(maxsize=None)
def _glyph_mask(text: str, size: int, bold: bool) -> np.ndarray:
    _, _, right, bottom = font(size, bold).getbbox(text)
    mask = Image.new("L", (max(right, 1), max(bottom, 1)), 0)
    ImageDraw.Draw(mask).text((0, 0), text, font=font(size, bold), fill=255)
    return np.asarray(mask, dtype=np.uint16)[:, :, None]


@functools.lru_cache(maxsize=None)
def text_advance(text: str, size: int) -> float:
    """How far the pen moves after drawing ``text`` in DejaVu Sans at ``size``."""
    return font(size).getlength(text)


def blit_white_text(frame: np.ndarray, text: str, x: int, y: int, size: int, bold: bool = False) -> None:
    """Draw white DejaVu Sans ``text`` into ``frame`` in place (top-left at x, y), clipped at the edges.

    The glyph mask is rendered once per (text, size) and alpha-blended with integer math, so the
    same calls always give the same pixels, and far faster than drawing through PIL every frame.
    """
    mask = _glyph_mask(text, size, bold)
    height = min(mask.shape[0], frame.shape[0] - y)
    width = min(mask.shape[1], frame.shape[1] - x)
    if height <= 0 or width <= 0:
        return
    region = frame[y : y + height, x : x + width].astype(np.uint16)
    alpha = mask[:height, :width]
    frame[y : y + height, x : x + width] = region + ((255 - region) * alpha + 127) // 255


class HumanWindow:
    """A pygame window that shows RGB frames (``render_mode="human"``); pygame is imported lazily."""

    def __init__(self, caption: str, fps: int):
        pygame = require("pygame", "human", 'render_mode="human"')
        self._pygame = pygame
        self._caption = caption
        self._fps = fps
        self._surface = None
        self._clock = pygame.time.Clock()

    def show(self, frame: np.ndarray) -> None:
        pygame = self._pygame
        height, width = frame.shape[:2]
        if self._surface is None:
            pygame.init()
            pygame.display.set_caption(self._caption)
            self._surface = pygame.display.set_mode((width, height))
        pygame.event.pump()
        self._surface.blit(pygame.surfarray.make_surface(frame.swapaxes(0, 1)), (0, 0))
        pygame.display.flip()
        self._clock.tick(self._fps)

    def close(self) -> None:
        if self._surface is not None:
            self._pygame.display.quit()
            self._surface = None
