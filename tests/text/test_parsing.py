"""The text-to-action parsers: the reference's test vectors and fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlm_envs.text.parsing import extract_action_value, find_action_key, match_command, parse_action

NL = ("-", "+")
BJ = ("stand", "hit")
EZP = tuple(str(i) for i in range(1, 11)) + ("+", "*", "=")
P24 = tuple(str(i) for i in range(1, 11)) + ("+", "-", "*", "/", "(", ")", "=")


@pytest.mark.parametrize(
    "text, vocab, mode, expected",
    [
        # typical SFT-style outputs
        ('{"current number": "1", "target number": "3", "thoughts": "add one", "action": "+"}', NL, "strict", 1),
        ('{"thoughts": "I have 13 points ... I should hit.", "action": "hit"}', BJ, "strict", 1),
        ('{"cards": [6, 2], "current formula": 6*, "thoughts": "...", "action": "2"}', EZP, "strict", 1),
        ('{"action": "10"}', P24, "strict", 9),
        ('"action": "Stand"', BJ, "strict", 0),  # case is ignored
        ("'action' is not a key here", BJ, "strict", None),
        ('"action" : \'hit\'', BJ, "strict", 1),  # whitespace, single quotes
        ('"action": =}', EZP, "strict", 12),  # unquoted value ends at }
        ('"action": "12"', EZP, "strict", None),  # not in vocabulary
        ('"action": "12"', EZP, "lenient", None),  # the number 12 is not an action
        ('{"action": "11"}', EZP, "lenient", None),  # numbers are whole tokens: 11 is never read as 1
        ('"action": "100"', P24, "lenient", None),  # ... nor 100 as 10
        ('"action": "append 7"', EZP, "lenient", 6),
        ('"action": "7 and 8"', EZP, "lenient", None),  # two numbers: ambiguous
        ('"action": "+1"', NL, "lenient", 1),  # no numbers in the vocabulary: digits are just text
        ('"action": "I will hit"', BJ, "lenient", 1),
        ('"action": "stick"', BJ, "lenient", None),  # synonyms are off by default
        ('{"action": "-"} then {"action": "+"}', NL, "strict", 1),  # the LAST key wins
        ('{"action": "-"} then {"action": "+"}', NL, "compat", None),  # reference: first key, then both match
        ("the answer is +", NL, "compat", 1),  # reference: no key keeps the last character
        ("the answer is + }", NL, "compat", None),  # ... which is "}" here
        ('"action": "12"', EZP, "compat", None),
        ('"action": "100"', P24, "compat", 9),
        ('"Action": "Hit"', BJ, "compat", 1),  # compat lowercases, then finds the key and "hit"
    ],
)
def test_parse_vectors(text, vocab, mode, expected):
    result = parse_action(text, vocab, mode)
    assert result.index == expected
    assert result.ok == (expected is not None)
    assert (result.reason == "") == result.ok


def test_a_number_outside_the_vocabulary_is_named_in_the_reason():
    result = parse_action('{"action": "11"}', EZP, "lenient")
    assert result.index is None and "11" in result.reason
    assert parse_action('{"action": "11"}', EZP, "strict").reason == "action value '11' is not in the vocabulary"
    assert parse_action('{"action": "11"}', EZP, "compat").index == 0  # the reference reads "1"


def test_aliases_are_opt_in():
    assert parse_action('"action": "stick"', BJ, "strict", aliases={"stick": "stand"}).index == 0


def test_non_string_output_is_a_failure_not_an_error():
    for bad in (None, 3, b'"action": "hit"', ["hit"]):
        for mode in ("strict", "lenient", "compat"):
            result = parse_action(bad, BJ, mode)
            assert not result.ok and "not str" in result.reason


def test_bad_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="mode must be one of"):
        parse_action("x", BJ, "fuzzy")


def test_find_action_key_gives_offsets_in_the_original_text():
    text = 'İİ {"action": "-", "ACTION" :  "+"}'
    start, end = find_action_key(text)
    assert text[start:end].lower().startswith('"action"') and text[end] == '"'
    assert extract_action_value(text) == "+"
    assert find_action_key("no key") is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ('"action": "go to cabinet 1"', "go to cabinet 1"),
        ('"action": "go to cabinet 10"', "go to cabinet 10"),  # never cabinet 1
        ('"action": "I go to cabinet 10 now"', "go to cabinet 10"),
        ('"action": "go to cabinet 12"', None),  # whole words: not cabinet 1
        ('"action": "Go To  Cabinet 1."', "go to cabinet 1"),  # case, spaces, punctuation
        ("I think I should go to cabinet 10", "go to cabinet 10"),  # no key: the last 30 characters
        ("junk text", None),
        ("", None),
        ("   ", None),
        ('"action": "take apple 1 from countertop 1"', "take apple 1 from countertop 1"),
    ],
)
def test_match_command_vectors(text, expected):
    admissible = ["go to cabinet 1", "go to cabinet 10", "look", "inventory", "take apple 1 from countertop 1"]
    assert match_command(text, admissible).command == expected


def test_match_command_compat_reproduces_the_prefix_bug():
    admissible = ["go to cabinet 1", "go to cabinet 10"]
    assert match_command('"action": "go to cabinet 10"', admissible, "compat").command == "go to cabinet 1"


def test_match_command_handles_huge_text():
    text = "x" * 100_000 + '"action": "look"'
    assert match_command(text, ["look"]).command == "look"
    assert match_command("y" * 100_000, ["look"]).command is None


json_near_misses = st.builds(
    lambda pre, key, sep, value, post: pre + key + sep + value + post,
    st.text(max_size=30),
    st.sampled_from(['"action"', "'action'", "action", '"Action"', '"actions"', '"action', '""action""']),
    st.sampled_from([":", " : ", "=", "", ":\n"]),
    st.one_of(st.sampled_from(['"hit"', "'+'", '"10"', "=", '"', "", '"go to cabinet 1"']), st.text(max_size=20)),
    st.text(max_size=30),
)


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.text(), json_near_misses), mode=st.sampled_from(["strict", "lenient", "compat"]))
def test_parse_action_never_raises_and_reports_validity(text, mode):
    for vocab in (NL, BJ, EZP, P24):
        result = parse_action(text, vocab, mode)
        assert (result.index is None) or 0 <= result.index < len(vocab)
        assert result.ok == (result.reason == "")


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.text(), json_near_misses), mode=st.sampled_from(["fixed", "compat"]))
def test_match_command_never_raises_and_returns_admissible(text, mode):
    admissible = ["go to cabinet 1", "go to cabinet 10", "look", "open fridge 1"]
    result = match_command(text, admissible, mode)
    assert result.command is None or result.command in admissible
    assert result.ok == (result.reason == "")


@settings(max_examples=20, deadline=None)
@given(st.text(min_size=1, max_size=5))
def test_huge_unicode_strings(chunk):
    text = chunk * (200_000 // len(chunk))
    assert parse_action(text, P24, "lenient").reason
    assert parse_action(text + '"action": "="', P24, "strict").index == 16
