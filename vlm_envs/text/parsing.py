"""Turn a model's raw output text into an environment action.

Model text is data: it is never evaluated, may be of any length and contain any unicode, and
every function here returns a result (never raises) for any ``str``; non-strings are reported as
parse failures.

Two kinds of action sets are supported:

* a fixed vocabulary (the card games): :func:`parse_action` returns an index into it;
* a per-step list of admissible commands (ALFWorld): :func:`match_command` returns one of them.

Both read the value of the **last** ``"action":`` key, the same key the PPO trainer uses to split
chain-of-thought tokens from action tokens (:func:`find_action_key`), so parser and trainer agree
on which part of the text is "the action".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Sequence, get_args

ParseMode = Literal["strict", "lenient", "compat"]
MatchMode = Literal["fixed", "compat"]

PARSE_MODES: tuple[ParseMode, ...] = get_args(ParseMode)
MATCH_MODES: tuple[MatchMode, ...] = get_args(MatchMode)

# `"action"` then optional whitespace, a colon, optional whitespace. Case-insensitive on the
# original text (not on ``text.lower()``) so that offsets stay valid for any unicode input.
ACTION_KEY_RE = re.compile(r'"action"\s*:\s*', re.IGNORECASE)
_COMPAT_KEY = '"action":'
_UNQUOTED_END_RE = re.compile(r"[,}\n]")
_WHITESPACE_RE = re.compile(r"\s+")
# Characters stripped from both ends of an extracted command (quotes, brackets, sentence marks).
_EDGE_PUNCTUATION = " \t\r\n\"'`.,;:!?()[]{}<>"
_COMPAT_TAIL_CHARS = 30
_NUMBER_RE = re.compile(r"\d+")


@dataclass(frozen=True)
class ParseResult:
    """Outcome of :func:`parse_action`.

    Attributes:
        index: the action index, or ``None`` when the text did not name exactly one action.
        raw_value: the text read after the ``"action":`` key (``None`` if there was no key).
        reason: ``""`` when parsing succeeded, otherwise a short human-readable cause.
    """

    index: int | None
    raw_value: str | None
    reason: str

    @property
    def ok(self) -> bool:
        return self.index is not None


@dataclass(frozen=True)
class CommandMatch:
    """Outcome of :func:`match_command`.

    Attributes:
        command: the matched admissible command, or ``None``.
        raw_value: the normalised text the match was made against.
        reason: ``""`` when a command matched, otherwise a short human-readable cause.
    """

    command: str | None
    raw_value: str | None
    reason: str

    @property
    def ok(self) -> bool:
        return self.command is not None


def find_action_key(text: str) -> tuple[int, int] | None:
    """Return ``(start, end)`` character offsets of the last ``"action":`` key in ``text``.

    ``end`` is where the action value starts. ``None`` if the key is absent.
    """
    last = None
    for last in ACTION_KEY_RE.finditer(text):
        pass
    return None if last is None else (last.start(), last.end())


def extract_action_value(text: str) -> str | None:
    """Read the value of the last ``"action":`` key, lowercased and stripped.

    A quoted value is read up to its closing quote (or the end of the text); an unquoted value
    up to the first ``,``, ``}`` or newline.
    """
    span = find_action_key(text)
    if span is None:
        return None
    rest = text[span[1]:]
    if rest[:1] in ("'", '"'):
        close = rest.find(rest[0], 1)
        value = rest[1:] if close < 0 else rest[1:close]
    else:
        end = _UNQUOTED_END_RE.search(rest)
        value = rest if end is None else rest[: end.start()]
    return value.strip().strip("\"'").strip().lower()


def _containment_matches(text: str, vocab: Sequence[str]) -> set[int]:
    """The reference rule: every vocabulary entry found as a substring (``10`` read first)."""
    found: set[int] = set()
    if "10" in vocab and "10" in text:
        found.add(list(vocab).index("10"))
        text = text.replace("10", "")
    for i, entry in enumerate(vocab):
        if entry in text:
            found.add(i)
    return found


def _single(found: set[int], value: str | None) -> ParseResult:
    if len(found) == 1:
        return ParseResult(found.pop(), value, "")
    if not found:
        return ParseResult(None, value, "no action from the vocabulary in the text")
    return ParseResult(None, value, f"ambiguous: {len(found)} different actions in the text")


def parse_action(
    text: object,
    vocab: Sequence[str],
    mode: ParseMode = "lenient",
    aliases: dict[str, str] | None = None,
) -> ParseResult:
    """Map model text to an index of ``vocab`` (the reference parser, with the fixes in ``docs/reference_differences.md``).

    Args:
        text: the decoded model output.
        vocab: action names in index order (``env.unwrapped.action_names``), lowercase.
        mode: ``"strict"`` accepts only an exact match of the extracted value;
            ``"lenient"`` then falls back to the reference containment rule on that value, except
            that numbers are whole tokens (``"11"`` is the number 11, a parse failure, never ``1``);
            ``"compat"`` reproduces the reference parser (first ``"action":`` key, or only the
            last character of the text when the key is missing).
        aliases: extra spellings mapped to vocabulary entries, e.g. ``{"stick": "stand"}``.

    Returns:
        A :class:`ParseResult`; ``index is None`` means the caller applies its failure rule.
    """
    if mode not in PARSE_MODES:
        raise ValueError(f"mode must be one of {PARSE_MODES}, got {mode!r}")
    if not isinstance(text, str):
        return ParseResult(None, None, f"model output is {type(text).__name__}, not str")
    if mode == "compat":
        lowered = text.lower()
        kept = lowered[lowered.find(_COMPAT_KEY):]  # find() == -1 keeps the last char, as the reference
        return _single(_containment_matches(kept, vocab), kept)

    value = extract_action_value(text)
    if value is None:
        return ParseResult(None, None, 'no "action": key in the text')
    lookup = {entry: i for i, entry in enumerate(vocab)}
    for alias, entry in (aliases or {}).items():
        lookup.setdefault(alias, lookup[entry])
    if value in lookup:
        return ParseResult(lookup[value], value, "")
    if mode == "strict":
        return ParseResult(None, value, f"action value {_preview(value)} is not in the vocabulary")
    if any(entry.isdigit() for entry in vocab):
        return _whole_number_matches(value, vocab)
    return _single(_containment_matches(value, vocab), value)


def _whole_number_matches(value: str, vocab: Sequence[str]) -> ParseResult:
    """Containment where numbers are whole tokens: ``"11"`` is the number 11, never the action ``1``.

    The reference's substring rule reads ``11`` as ``1`` (and ``12`` as ambiguous); a number that is
    not in the vocabulary is a parse failure instead, with the number as the reason.
    """
    numbers = _NUMBER_RE.findall(value)
    outside = [n for n in numbers if n not in vocab]
    if outside:
        return ParseResult(None, value, f"the number {outside[0]} is not an action (numbers: {', '.join(e for e in vocab if e.isdigit())})")
    found = {list(vocab).index(n) for n in numbers}
    found |= {i for i, entry in enumerate(vocab) if not entry.isdigit() and entry in value}
    return _single(found, value)


def normalize_command(text: str) -> str:
    """Lowercase, collapse whitespace and strip quotes/punctuation from both ends."""
    return _WHITESPACE_RE.sub(" ", text.lower()).strip(_EDGE_PUNCTUATION)


def _longest_contained(text: str, commands: Sequence[str]) -> str | None:
    """The longest command that appears in ``text`` as whole words.

    Whole-word matching keeps ``go to cabinet 1`` from matching inside ``go to cabinet 12``; the
    longest match makes ``go to cabinet 10`` win over ``go to cabinet 1``.
    """
    best = None
    for command in commands:
        if best is not None and len(command) <= len(best):
            continue
        if re.search(r"(?<![a-z0-9])" + re.escape(command) + r"(?![a-z0-9])", text):
            best = command
    return best


def match_command(text: object, admissible: Sequence[str], mode: MatchMode = "fixed") -> CommandMatch:
    """Match model text to one of the admissible commands (the reference matcher, or its fixed form).

    ``"fixed"`` (default): read the ``"action":`` value, then try an exact match, the longest
    admissible command contained in the value, and the longest contained in the last 30
    characters of the text. ``"compat"``: the reference rule (first ``"action":`` key or the last
    30 characters; the first command in list order that is a substring).
    """
    if mode not in MATCH_MODES:
        raise ValueError(f"mode must be one of {MATCH_MODES}, got {mode!r}")
    if not isinstance(text, str):
        return CommandMatch(None, None, f"model output is {type(text).__name__}, not str")
    if not admissible:
        return CommandMatch(None, None, "no admissible commands")
    if not text.strip():
        return CommandMatch(None, "", "empty model output")
    originals = {normalize_command(c): c for c in admissible}
    commands = list(originals)

    if mode == "compat":
        lowered = text.lower()
        start = lowered.find(_COMPAT_KEY)
        kept = lowered[start:] if start >= 0 else lowered[-_COMPAT_TAIL_CHARS:]
        for command in admissible:
            if command.lower() in kept:
                return CommandMatch(command, kept, "")
        return CommandMatch(None, kept, "no admissible command in the text")

    value = extract_action_value(text)
    if value is not None:
        value = normalize_command(value)
        if value in originals:
            return CommandMatch(originals[value], value, "")
        found = _longest_contained(value, commands)
        if found is not None:
            return CommandMatch(originals[found], value, "")
    tail = normalize_command(text[-_COMPAT_TAIL_CHARS:])
    found = _longest_contained(tail, commands)
    if found is not None:
        return CommandMatch(originals[found], tail, "")
    if value is None:
        return CommandMatch(None, tail, 'no "action": key and no admissible command at the end of the text')
    return CommandMatch(None, value, f"{_preview(value)} is not an admissible command")


def _preview(value: str, limit: int = 40) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")
