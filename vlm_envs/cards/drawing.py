"""Card sprites and frame layout helpers for the card games.

Cards are drawn procedurally (a white card with the rank in two corners and a large suit pip),
so no third-party art is shipped. ``card_art`` directories with the original RL4VLM PNGs (named
by card code, e.g. ``HQ.png``, plus ``back.png``) can be plugged in instead: the authors' SFT
checkpoints were trained on those pixels. Every sprite is built once per (art, card, size) and
cached, within a budget of bytes.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vlm_envs.core.arguments import check_path
from vlm_envs.core.caching import byte_lru_cache
from vlm_envs.cards.deck import FULL_DECK
from vlm_envs.core.rendering import font

FELT_GREEN = (0x35, 0x65, 0x4D)
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
CANVAS = (300, 300)  # every layout below is in 300x300 coordinates, resized afterwards

_SUIT_GLYPHS = {"H": "\u2665", "D": "\u2666", "S": "\u2660", "C": "\u2663"}
_RED = (200, 16, 32)
_BACK_BLUE = (32, 64, 160)
_MASTER_SIZE = (150, 210)  # procedural cards are drawn at this size, then resized


def _rank_label(code: str) -> str:
    return "10" if code[1] == "T" else code[1]


@functools.lru_cache(maxsize=None)
def _procedural_card(code: str) -> Image.Image:
    width, height = _MASTER_SIZE
    image = Image.new("RGB", _MASTER_SIZE, FELT_GREEN)
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle((0, 0, width - 1, height - 1), radius=12, fill=WHITE, outline=BLACK, width=3)
    if code == "back":
        draw.rounded_rectangle((12, 12, width - 13, height - 13), radius=8, fill=_BACK_BLUE)
        for x in range(12, width - 12, 14):
            draw.line((x, 12, x, height - 13), fill=(70, 100, 190), width=3)
        return image
    color = _RED if code[0] in "HD" else BLACK
    label, pip = _rank_label(code), _SUIT_GLYPHS[code[0]]
    corner, small, big = font(40, bold=True), font(30), font(96)
    for x, y, anchor_rank, anchor_pip, flip in ((12, 8, "la", "la", False), (width - 12, height - 8, "rd", "rd", True)):
        draw.text((x, y), label, font=corner, fill=color, anchor=anchor_rank)
        pip_y = y + 44 if not flip else y - 44
        draw.text((x, pip_y), pip, font=small, fill=color, anchor=anchor_pip)
    draw.text((width // 2, height // 2), pip, font=big, fill=color, anchor="mm")
    return image


CARD_ART_FILES: tuple[str, ...] = tuple(f"{code}.png" for code in (*FULL_DECK, "back"))
_SPRITE_BYTES = 16 * 2**20  # every card at every game's card size is ~6 MiB; the rest is for card_art folders


def check_card_art(card_art: object) -> str | None:
    """``card_art`` as an absolute folder path (one cache entry per folder, however it is spelled),
    or ``None``. A folder without every card image is refused; the message names neither the
    folder nor what it holds, so an error never tells a remote client which files exist."""
    if card_art is None:
        return None
    try:
        folder = Path(check_path("card_art", card_art)).resolve()
        complete = all((folder / name).is_file() for name in CARD_ART_FILES)
    except (OSError, ValueError):  # a name too long, a NUL byte, a loop of links
        complete = False
    if not complete:
        raise ValueError("card_art must be a folder holding one PNG per card code (HA.png, H2.png, ..., CK.png) and back.png")
    return str(folder)


@byte_lru_cache("cards.sprites", _SPRITE_BYTES)
def card_sprite(code: str, size: tuple[int, int], art_dir: str | None = None) -> np.ndarray:
    """The card ``code`` (or ``"back"``) as a read-only RGB array of ``size`` = (width, height), cached.

    ``art_dir`` is a folder accepted by :func:`check_card_art`."""
    if art_dir is None:
        source = _procedural_card(code)
    else:
        try:
            # The reference pastes RGBA art without a mask, i.e. it drops transparency: do the same.
            source = Image.open(Path(art_dir) / f"{code}.png").convert("RGB")
        except (OSError, ValueError):  # PIL's messages name the file's path
            raise ValueError(f"card_art: {code}.png cannot be read as an image") from None
    sprite = np.array(source.resize(size, Image.Resampling.LANCZOS), dtype=np.uint8)
    sprite.flags.writeable = False
    return sprite


_FELT = np.empty((*CANVAS, 3), dtype=np.uint8)
_FELT[:] = FELT_GREEN  # np.full with an RGB tuple is ~50x slower than copying this


def felt_table() -> np.ndarray:
    """A new 300x300 felt-green RGB array."""
    return _FELT.copy()


def place_cards(frame: np.ndarray, codes: list[str], positions: list[tuple[int, int]], size: tuple[int, int], art_dir: str | None) -> None:
    """Copy each card's sprite into ``frame`` at its top-left (x, y); later cards overlap earlier ones."""
    for code, (x, y) in zip(codes, positions):
        sprite = card_sprite(code, size, art_dir)
        height, width = min(sprite.shape[0], frame.shape[0] - y), min(sprite.shape[1], frame.shape[1] - x)
        frame[y : y + height, x : x + width] = sprite[:height, :width]
