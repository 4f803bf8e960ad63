"""The text side shared by every environment: parsing model output and building prompts."""

from vlm_envs.text.parsing import (
    CommandMatch,
    ParseResult,
    extract_action_value,
    find_action_key,
    match_command,
    parse_action,
)
from vlm_envs.text.prompts import build_prompt, chat_messages, conversation, template

__all__ = [
    "CommandMatch",
    "ParseResult",
    "build_prompt",
    "chat_messages",
    "conversation",
    "extract_action_value",
    "find_action_key",
    "match_command",
    "parse_action",
    "template",
]
