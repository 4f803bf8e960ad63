"""The messages' data between an env server and its clients, typed once for both (pydantic, which
the serve extra brings with OpenEnv).

The server publishes these models at ``/schema``; the client builds its steps from
:class:`StepAction` and reads every reset and step answer as a :class:`StepAnswer`. The session's
env (:mod:`vlm_envs.remote.served_env`) writes its answers as plain JSON, without pydantic, and the
tests hold that JSON to these models.
"""

from __future__ import annotations

from typing import Any

from vlm_envs.optional import require
from vlm_envs.remote.served_env import MAX_TEXT_CHARS

require("pydantic", "serve", "the remote wire format")
from pydantic import BaseModel, Field, StrictInt, StrictStr  # noqa: E402


class StepAction(BaseModel):
    """A step: the model's raw text (parsed by ``TextActions``) or an action index, exactly one (``/schema``)."""

    text: StrictStr | None = Field(default=None, max_length=MAX_TEXT_CHARS, description="the model's output text")
    index: StrictInt | None = Field(default=None, ge=0, description="an action index (sessions reset with text_actions=false)")


class StepObservation(BaseModel):
    """A reset or step answer's ``observation`` (``/schema``); ``reward`` and ``done`` sit beside it."""

    image: dict[str, Any] = Field(description="{encoding: png|raw, shape: [H, W, 3], data: base64}")
    text: str = Field(description='obs["text"]')
    info: dict[str, Any] = Field(description="the step's info, tagged JSON (vlm_envs.remote.codec)")
    terminated: bool = False
    truncated: bool = False


class StepAnswer(BaseModel):
    """The data of a reset or step answer: OpenEnv's observation message."""

    observation: StepObservation
    reward: int | float | None = None  # as the env returned it: an int stays an int
    done: bool = False
