"""What crosses the wire between the env server and its clients, as JSON that round-trips exactly.

* :func:`encode_value` / :func:`decode_value`: ``info`` dicts and other plain values. Tuples,
  numpy arrays and numpy scalars are tagged, so the client gets back the same types the local
  env returned (``info["dealer_upcard"]`` stays a tuple, an ``np.int64`` stays one).
* :func:`encode_image` / :func:`decode_image`: an ``(H, W, 3)`` uint8 frame as base64 PNG or
  base64 raw bytes (``benchmarks/serve_throughput.py`` measures both); never a JSON list of ints.
* :func:`space_to_json` / :func:`space_from_json`: the ``Box``/``Discrete``/``Text``/``Dict`` spaces
  of the envs, so a remote env has the same spaces as the local one (``==`` holds).

Only numpy, pillow and gymnasium: both sides import this module.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from gymnasium import spaces

from vlm_envs.core.spaces import EnvText

IMAGE_ENCODINGS: tuple[str, ...] = ("png", "raw")
# The largest answer a client accepts (OpenEnv's client default). The largest frame an env draws
# (2048x2048, vlm_envs.core.spaces.MAX_IMAGE_SIDE) is 16 MiB of base64 sent raw, so every frame fits;
# the server refuses a larger answer.
MAX_ANSWER_BYTES = 100 * 1024 * 1024
# Level 1 is several times faster than zlib's default 6 and the card frames stay a few KB.
_PNG_COMPRESS_LEVEL = 1
_TAGS = ("__tuple__", "__ndarray__", "__npscalar__", "__dict__")


def encode_value(value: Any) -> Any:
    """``value`` as JSON-safe data; :func:`decode_value` restores it with its types."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.generic):
        return {"__npscalar__": value.item(), "dtype": value.dtype.str}
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, np.ndarray):
        return {"__ndarray__": _b64(np.ascontiguousarray(value).tobytes()), "dtype": value.dtype.str, "shape": list(value.shape)}
    if isinstance(value, tuple):
        return {"__tuple__": [encode_value(v) for v in value]}
    if isinstance(value, list):
        return [encode_value(v) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and not any(k in _TAGS for k in value):
            return {k: encode_value(v) for k, v in value.items()}
        return {"__dict__": [[encode_value(k), encode_value(v)] for k, v in value.items()]}
    raise TypeError(f"cannot send a {type(value).__name__} to a remote client: {value!r}")


def decode_value(data: Any) -> Any:
    """The inverse of :func:`encode_value`."""
    if isinstance(data, list):
        return [decode_value(v) for v in data]
    if not isinstance(data, dict):
        return data
    if "__tuple__" in data:
        return tuple(decode_value(v) for v in data["__tuple__"])
    if "__npscalar__" in data:
        return np.dtype(data["dtype"]).type(data["__npscalar__"])
    if "__ndarray__" in data:
        return np.frombuffer(_unb64(data["__ndarray__"]), dtype=np.dtype(data["dtype"])).reshape(data["shape"]).copy()
    if "__dict__" in data:
        return {_hashable(decode_value(k)): decode_value(v) for k, v in data["__dict__"]}
    return {k: decode_value(v) for k, v in data.items()}


def encode_image(image: np.ndarray, encoding: str) -> dict[str, Any]:
    """An ``(H, W, 3)`` uint8 frame as ``{"encoding", "shape", "data"}`` (``data`` is base64)."""
    image = np.asarray(image)
    if encoding == "png":
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
        data = buffer.getvalue()
    elif encoding == "raw":
        data = np.ascontiguousarray(image, dtype=np.uint8).tobytes()
    else:
        raise ValueError(f"image_encoding must be one of {IMAGE_ENCODINGS}, got {encoding!r}")
    return {"encoding": encoding, "shape": list(image.shape), "data": _b64(data)}


def decode_image(payload: dict[str, Any]) -> np.ndarray:
    """The frame :func:`encode_image` sent, as a writable uint8 array."""
    data, shape = _unb64(payload["data"]), tuple(payload["shape"])
    if payload["encoding"] == "png":
        from PIL import Image

        image = Image.open(io.BytesIO(data))
        image = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    else:
        image = np.frombuffer(data, dtype=np.uint8)
    return image.reshape(shape).copy()


def space_to_json(space: spaces.Space) -> dict[str, Any]:
    """A description of ``space`` that :func:`space_from_json` turns back into an equal space."""
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": {k: space_to_json(s) for k, s in space.spaces.items()}}
    if isinstance(space, spaces.Box):
        return {"type": "Box", "low": _bound(space.low), "high": _bound(space.high), "shape": list(space.shape),
                "dtype": space.dtype.str}
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.Text):
        return {"type": "EnvText" if isinstance(space, EnvText) else "Text", "min_length": space.min_length,
                "max_length": space.max_length, "charset": "".join(sorted(space.character_set))}
    raise TypeError(f"cannot describe a {type(space).__name__} space to a remote client")


def space_from_json(data: dict[str, Any]) -> spaces.Space:
    """The inverse of :func:`space_to_json`."""
    kind = data["type"]
    if kind == "Dict":
        return spaces.Dict({k: space_from_json(s) for k, s in data["spaces"].items()})
    if kind == "Box":
        return spaces.Box(decode_value(data["low"]), decode_value(data["high"]), tuple(data["shape"]), np.dtype(data["dtype"]))
    if kind == "Discrete":
        return spaces.Discrete(data["n"], start=data["start"])
    if kind in ("Text", "EnvText"):
        cls = EnvText if kind == "EnvText" else spaces.Text
        return cls(max_length=data["max_length"], min_length=data["min_length"], charset=data["charset"])
    raise ValueError(f"unknown space type {kind!r}")


def _bound(bound: np.ndarray) -> Any:
    """A Box bound: one scalar when it is uniform (the usual 0..255 image), else the whole array."""
    flat = bound.reshape(-1)
    return encode_value(flat[0]) if flat.size and np.all(flat == flat[0]) else encode_value(bound)


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)
