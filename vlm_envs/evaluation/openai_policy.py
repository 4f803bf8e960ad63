"""``openai:URL``: any OpenAI-compatible chat-completions server as the policy (vLLM, SGLang, llama.cpp).

Each step is one ``POST {URL}/chat/completions`` with one user message: the prompt as a text
part and the observation image as a base64 PNG ``image_url`` part, or the prompt alone with
``images=False`` (text-only models; pair it with ``--text-mode full`` so the state is in the
prompt). Requests are bounded (``max_tokens``, ``timeout``); a timeout, a 5xx or 429 answer, or a
body that is not a chat completion is retried with exponential backoff ``retries`` times, then
the step is played as a parse failure whose reason is recorded on the result card. Other 4xx
answers are not retried. Only the standard library is used.

Decoding: ``temperature=0`` (default) is greedy; with a temperature, each request carries a
``seed`` derived from its episode and step, so servers that honour it sample reproducibly.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence
from urllib.parse import urlsplit

import numpy as np

from vlm_envs.evaluation.policies import Reply, Request

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


class _Retryable(Exception):
    """A failure worth another try (timeout, 5xx, malformed body)."""


def chat_completions_url(url: str) -> str:
    """``http://host:port`` or ``.../v1`` or ``.../v1/chat/completions`` -> the chat-completions endpoint."""
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    if not urlsplit(url).path:
        url += "/v1"
    return url + "/chat/completions"


def png_data_url(image: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class OpenAIPolicy:
    """A chat-completions server as the policy (see the module docstring)."""

    needs_oracle = False

    def __init__(self, url: str, *, model: str | None = None, temperature: float = 0.0, max_new_tokens: int = 256,
                 images: bool = True, timeout: float = 60.0, retries: int = 3, backoff: float = 0.5,
                 concurrency: int = 8, api_key: str | None = None):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"openai: needs an http(s) URL, got {url!r}")
        if retries < 0 or timeout <= 0 or max_new_tokens < 1 or concurrency < 1:
            raise ValueError("retries >= 0, timeout > 0, max_new_tokens >= 1 and concurrency >= 1 are needed")
        self.endpoint = chat_completions_url(url)
        self.temperature = float(temperature)
        self.max_tokens = int(max_new_tokens)
        self.images = bool(images)
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.concurrency = int(concurrency)
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.model = model or self._first_model()
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency)

    def _first_model(self) -> str:
        """The server's first model (``GET /v1/models``), for servers that serve one."""
        models_url = self.endpoint[: -len("/chat/completions")] + "/models"
        try:
            with urllib.request.urlopen(urllib.request.Request(models_url, headers=self.headers), timeout=self.timeout) as r:
                return json.loads(r.read())["data"][0]["id"]
        except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
            raise ValueError(f"could not read the model name from {models_url} ({err}); pass model=... (--model)") from None

    def describe(self) -> dict[str, Any]:
        return {"name": "openai", "url": self.endpoint, "model": self.model, "temperature": self.temperature,
                "max_tokens": self.max_tokens, "images": self.images}

    def body(self, request: Request) -> dict[str, Any]:
        content: Any = request.prompt
        if self.images:
            content = [{"type": "text", "text": request.prompt},
                       {"type": "image_url", "image_url": {"url": png_data_url(request.image)}}]
        body = {"model": self.model, "messages": [{"role": "user", "content": content}],
                "max_tokens": self.max_tokens, "temperature": self.temperature}
        if self.temperature > 0:
            body["seed"] = int(request.rng().integers(2**31))
        return body

    def act(self, requests: Sequence[Request]) -> list[Reply]:
        return list(self._pool.map(self._answer, requests))

    def _answer(self, request: Request) -> Reply:
        data = json.dumps(self.body(request)).encode()
        reason = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                return Reply(self._post(data))
            except _Retryable as err:
                reason = str(err)
            except urllib.error.HTTPError as err:  # a 4xx that retrying will not fix
                return Reply("", error=f"HTTP {err.code} from the server: {_snippet(err.read())}")
        return Reply("", error=f"{reason} (after {self.retries + 1} attempts)")

    def _post(self, data: bytes) -> str:
        http_request = urllib.request.Request(self.endpoint, data=data, headers=self.headers, method="POST")
        try:
            with urllib.request.urlopen(http_request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            if err.code in RETRYABLE_STATUS:
                raise _Retryable(f"HTTP {err.code} from the server: {_snippet(err.read())}") from None
            raise
        except (socket.timeout, TimeoutError):
            raise _Retryable(f"no answer within {self.timeout:g} s") from None
        except (urllib.error.URLError, ConnectionError, OSError) as err:
            reason = getattr(err, "reason", err)
            if isinstance(reason, (socket.timeout, TimeoutError)):
                raise _Retryable(f"no answer within {self.timeout:g} s") from None
            raise _Retryable(f"connection failed: {reason}") from None
        try:
            text = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Retryable(f"malformed body (not a chat completion): {_snippet(raw)}") from None
        if not isinstance(text, str):
            raise _Retryable(f"malformed body (content is {type(text).__name__}): {_snippet(raw)}")
        return text

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _snippet(raw: bytes, limit: int = 80) -> str:
    text = raw.decode("utf-8", "replace").strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")
