"""One command-line layer for the baselines: a dataclass config becomes flags through ``tyro``.

Every field is a ``--kebab-case`` flag whose help is the docstring under the field; ``Literal``
fields accept only their choices (checked at parse time). Booleans take a value, as they always
have in these scripts (``--cot false``, ``--resume true``; any of true/false, yes/no, on/off, 1/0).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence, TypeVar

T = TypeVar("T")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_config(cls: type[T], argv: Sequence[str], *, prog: str, description: str, default: T | None = None) -> T:
    import tyro

    return tyro.cli(cls, args=_normalise_booleans(cls, list(argv)), default=default, prog=prog,
                    description=description, config=(tyro.conf.FlagConversionOff,))


def _normalise_booleans(cls: type, argv: list[str]) -> list[str]:
    """``--flag true`` -> ``--flag True`` for boolean fields (tyro spells them ``True``/``False``)."""
    flags = {"--" + f.name.replace("_", "-") for f in dataclasses.fields(cls) if f.type in (bool, "bool")}
    spell = lambda v: "True" if v.lower() in _TRUE else "False"  # noqa: E731
    out = []
    for i, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if eq and flag in flags and value.lower() in _TRUE + _FALSE:  # --flag=value
            out.append(f"{flag}={spell(value)}")
        elif i and argv[i - 1] in flags and arg.lower() in _TRUE + _FALSE:  # --flag value
            out.append(spell(arg))
        else:
            out.append(arg)
    return out
