"""The observation image: an honest schematic of what the agent has observed (not a THOR frame).

The paper fed AI2-THOR camera frames; THOR cannot run offline, so the image is a map-like
schematic drawn **only from what the text has told the agent**:

* every receptacle of the room as a tile (the intro lists them all), the agent's current one
  highlighted, the ones it has visited in white, the others grey;
* for openable receptacles, whether they are open or closed, once the agent has been there;
* the contents of a receptacle as they were when the agent last saw them (the game lists them on
  arrival at an open receptacle, on opening it, and on examining it), ``?`` if never seen;
* what the agent holds, and the hot / cold / clean / sliced / on state of an object once the
  text has stated it (``examine``, ``heat``, ``cool``, ``clean``, ``slice``, ``use``).

The game's facts contain hidden state (the contents of closed receptacles, object properties);
:class:`Knowledge` lets them through only under the conditions above, and the renderer sees only
the :class:`Knowledge`. ``tests/alfworld/test_alfworld_env.py`` checks that games which differ only in
hidden state give identical images until the agent uncovers the difference.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from vlm_envs.alfworld_wrap.tasks import FactIndex
from vlm_envs.alfworld_wrap.tasks import natural_key as _natural_key
from vlm_envs.core.caching import ByteLRU, byte_lru_cache, deep_sizeof
from vlm_envs.core.rendering import font

_FLAG_WORDS = (("ishot", "hot"), ("iscool", "cold"), ("isclean", "clean"), ("issliced", "sliced"), ("istoggled", "on"))
_REVEALING = re.compile(r"^(?:examine|heat|cool|clean|slice|use) (.+?)(?: with .+)?$")


@dataclass
class Knowledge:
    """What the agent has observed so far in the episode (no hidden state)."""

    receptacles: list[str]
    openable: frozenset[str]
    location: str | None = None
    visited: set[str] = field(default_factory=set)
    is_open: dict[str, bool] = field(default_factory=dict)
    seen: dict[str, list[str]] = field(default_factory=dict)
    held: list[str] = field(default_factory=list)
    revealed: set[str] = field(default_factory=set)  # objects whose state the text has stated
    flags: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def start(cls, facts: FactIndex) -> "Knowledge":
        """Knowledge at reset: the receptacle names (the intro lists them) and nothing else."""
        receptacles = sorted({args[0] for args in facts.by_pred["receptacletype"]}, key=_natural_key)
        knowledge = cls(receptacles, frozenset(facts.unary["openable"]))
        knowledge.update(facts, None)
        return knowledge

    def update(self, facts: FactIndex, command: str | None) -> None:
        """Add what the feedback of ``command`` (already applied; ``facts`` is the new state) showed."""
        self.location = facts.receptacle_at(facts.agent_location())
        self.held = sorted(facts.held(), key=_natural_key)
        here = self.location
        if here is not None:
            self.visited.add(here)
            opened = here in facts.unary["opened"]
            if here in self.openable:
                self.is_open[here] = opened  # "The fridge 1 is closed." / "... is open. In it, ..."
            if here not in self.openable or opened:  # the feedback lists what is in or on it
                self.seen[here] = sorted(facts.contents().get(here, []), key=_natural_key)
        if command:
            match = _REVEALING.match(command)
            if match:
                self.revealed.add(match.group(1))
        self.flags = {
            obj: tuple(word for pred, word in _FLAG_WORDS if obj in facts.unary[pred])
            for obj in sorted(self.revealed)
        }

    def snapshot(self) -> tuple:
        """A hashable summary: equal snapshots draw identical images."""
        return (self.location, tuple(sorted(self.visited)), tuple(sorted(self.is_open.items())),
                tuple((k, tuple(v)) for k, v in sorted(self.seen.items())), tuple(self.held),
                tuple(sorted(self.flags.items())))

    def label(self, obj: str) -> str:
        flags = self.flags.get(obj)
        return f"{obj} ({', '.join(flags)})" if flags else obj

    def describe(self) -> str:
        """The schematic in words (the ``text_mode="full"`` observation)."""
        lines = [f"You are at: {self.location or 'the middle of the room'}.",
                 f"You hold: {', '.join(self.label(o) for o in self.held) or 'nothing'}."]
        for rec in self.receptacles:
            state = ""
            if rec in self.openable:
                state = {True: " (open)", False: " (closed)"}.get(self.is_open.get(rec), " (not visited)")
            if rec in self.seen:
                inside = ", ".join(self.label(o) for o in self.seen[rec]) or "nothing"
            else:
                inside = "unknown"
            lines.append(f"- {rec}{state}: {inside}")
        return "\n".join(lines)


# -- drawing ----------------------------------------------------------------------------------
_BG = (236, 232, 222)
_UNVISITED = (205, 205, 205)
_VISITED = (252, 252, 250)
_CURRENT = (255, 226, 122)
_INK = (30, 30, 30)
_DIM = (110, 110, 110)
_CLOSED = (139, 90, 43)
_OPEN = (60, 150, 70)
_AGENT = (200, 40, 40)


def _fit(draw: ImageDraw.ImageDraw, text: str, fnt, width: float) -> str:
    if draw.textlength(text, font=fnt) <= width:
        return text
    while len(text) > 1 and draw.textlength(text + "..", font=fnt) > width:
        text = text[:-1]
    return text + ".."


_SUFFIXES = ("table", "top", "machine", "burner", "can", "basin", "holder", "hanger", "hamper", "stand", "chair")


def _label_lines(name: str, split: bool) -> list[str]:
    """``countertop 2`` -> ``["countertop 2"]``, or split in two lines: ``["counter", "top 2"]``."""
    if not split:
        return [name]
    kind, _, number = name.rpartition(" ")
    for suffix in _SUFFIXES:
        if kind.endswith(suffix) and len(kind) > len(suffix):
            return [kind[: -len(suffix)], f"{suffix} {number}"]
    return [kind, number]


@dataclass(frozen=True)
class _Layout:
    base: np.ndarray  # every tile drawn as "not visited"
    tiles: dict[str, tuple[float, float, float, float]]
    labels: dict[str, list[str]]
    name_font: object
    small: object
    head_font: object
    pad: int
    scale: float
    # Drawn tiles by (receptacle, state), reused; at most _PATCH_FRAMES frames' worth of them.
    patches: ByteLRU = field(default_factory=lambda: ByteLRU(None, 0))

    def patch(self, rec: str, openable: bool, current: bool, is_open, lines) -> tuple[int, int, np.ndarray]:
        key = (rec, current, is_open, None if lines is None else tuple(lines))
        found = self.patches.get(key)
        if found is None:
            x0, y0, x1, y1 = self.tiles[rec]
            left, top = int(x0), int(y0)
            right, bottom = int(math.ceil(x1)) + 1, int(math.ceil(y1)) + 1
            tile = Image.fromarray(self.base[top:bottom, left:right].copy())
            shifted = _Layout(self.base, {rec: (x0 - left, y0 - top, x1 - left, y1 - top)}, self.labels,
                              self.name_font, self.small, self.head_font, self.pad, self.scale)
            _draw_tile(ImageDraw.Draw(tile), shifted, rec, openable, fill=_CURRENT if current else _VISITED,
                       current=current, is_open=is_open, lines=lines)
            found = (left, top, np.asarray(tile))
            self.patches.put(key, found)
        return found


_PATCH_FRAMES = 4
_LAYOUT_BYTES = 64 * 2**20  # ~45 rooms at 300x300; one at 2048x2048


def _layout_bytes(key: tuple, layout: _Layout) -> int:
    return deep_sizeof(key) + layout.base.nbytes + layout.patches.max_bytes  # with the tiles it may draw


@byte_lru_cache("alfworld.layouts", _LAYOUT_BYTES, _layout_bytes)
def _layout(receptacles: tuple[str, ...], openable: frozenset[str], size: tuple[int, int]) -> _Layout:
    height, width = size
    scale = min(height, width) / 300.0
    pad = max(2, round(3 * scale))
    head_font = font(max(6, round(11 * scale)), bold=True)
    small = font(max(6, round(8 * scale)))
    header_h = round(30 * scale)
    n = max(1, len(receptacles))
    grid_top = header_h + pad
    grid_h, grid_w = height - grid_top - pad, width - 2 * pad
    cols = max(1, math.ceil(math.sqrt(n * grid_w / max(grid_h, 1))))
    rows = math.ceil(n / cols)
    tile_w, tile_h = grid_w / cols, grid_h / rows
    icon = round(7 * scale)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    room = tile_w - 4 * pad - icon
    chosen = None
    for split in (False, True):  # the largest font in which every label fits; split if needed
        for size_px in range(max(6, round(9 * scale)), 5, -1):
            fnt = font(size_px, bold=True)
            labels = {r: _label_lines(r, split) for r in receptacles}
            if all(measure.textlength(line, font=fnt) <= room for lines in labels.values() for line in lines):
                chosen = (fnt, labels)
                break
        if chosen:
            break
    if chosen is None:
        fnt = font(6, bold=True)
        chosen = (fnt, {r: [_fit(measure, line, fnt, room) for line in _label_lines(r, True)] for r in receptacles})
    name_font, labels = chosen
    tiles = {}
    for i, rec in enumerate(receptacles):
        r, c = divmod(i, cols)
        x0, y0 = pad + c * tile_w, grid_top + r * tile_h
        tiles[rec] = (x0, y0, x0 + tile_w - pad, y0 + tile_h - pad)
    layout = _Layout(np.zeros(0), tiles, labels, name_font, small, head_font, pad, scale)
    image = Image.new("RGB", (width, height), _BG)
    d = ImageDraw.Draw(image)
    for rec in receptacles:
        _draw_tile(d, layout, rec, rec in openable, fill=_UNVISITED, current=False, is_open=None, lines=None)
    base = np.asarray(image)
    return _Layout(base, tiles, labels, name_font, small, head_font, pad, scale,
                   ByteLRU(None, _PATCH_FRAMES * base.nbytes))


def _draw_tile(d, layout: _Layout, rec: str, openable: bool, fill, current: bool, is_open, lines) -> None:
    pad, scale = layout.pad, layout.scale
    x0, y0, x1, y1 = layout.tiles[rec]
    d.rectangle((x0, y0, x1, y1), fill=fill, outline=_AGENT if current else _DIM,
                width=max(1, round((3 if current else 1) * scale)))
    if openable:
        icon = round(7 * scale)
        ix, iy = x1 - pad - icon, y0 + pad
        if is_open is True:
            d.rectangle((ix, iy, ix + icon, iy + icon), outline=_OPEN, width=max(1, round(2 * scale)))
        elif is_open is False:
            d.rectangle((ix, iy, ix + icon, iy + icon), fill=_CLOSED)
        else:
            d.rectangle((ix, iy, ix + icon, iy + icon), outline=_DIM, width=1)
    y = y0 + pad
    for text in layout.labels[rec]:
        d.text((x0 + pad, y), text, fill=_INK, font=layout.name_font)
        y += layout.name_font.size
    y += max(1, round(2 * scale))
    colour = _DIM if lines is None else _INK
    lines = ["?"] if lines is None else (lines or ["(empty)"])
    line_h = layout.small.size + max(1, round(scale))
    room = max(1, int((y1 - pad - y) // line_h))
    if len(lines) > room:
        lines = lines[: room - 1] + [f"+{len(lines) - room + 1} more"]
    inner_w = x1 - x0 - 2 * pad
    for text in lines:
        d.text((x0 + pad, y), _fit(d, text, layout.small, inner_w), fill=colour, font=layout.small)
        y += line_h


def draw(knowledge: Knowledge, size: tuple[int, int]) -> np.ndarray:
    """The schematic as an ``(H, W, 3)`` uint8 array.

    The tiles of receptacles not yet visited are drawn once per room and size (cached); a frame
    redraws only the header and the tiles the agent has seen.
    """
    height, width = size
    layout = _layout(tuple(knowledge.receptacles), knowledge.openable, (height, width))
    frame = layout.base.copy()
    for rec in knowledge.receptacles:
        current = rec == knowledge.location
        if not current and rec not in knowledge.visited:
            continue
        seen = knowledge.seen.get(rec)
        left, top, patch = layout.patch(rec, rec in knowledge.openable, current, knowledge.is_open.get(rec),
                                        None if seen is None else [knowledge.label(o) for o in seen])
        frame[top:top + patch.shape[0], left:left + patch.shape[1]] = patch
    header_h = round(30 * layout.scale)
    image = Image.fromarray(frame[:header_h])
    d = ImageDraw.Draw(image)
    pad, scale = layout.pad, layout.scale
    held = ", ".join(knowledge.label(o) for o in knowledge.held) or "nothing"
    d.text((pad, pad), _fit(d, f"Holding: {held}", layout.head_font, width - 2 * pad), fill=_INK, font=layout.head_font)
    where = knowledge.location or "middle of the room"
    d.text((pad, pad + round(14 * scale)), _fit(d, f"At: {where}", layout.head_font, width - 2 * pad),
           fill=_AGENT, font=layout.head_font)
    frame[:header_h] = np.asarray(image)
    return frame
