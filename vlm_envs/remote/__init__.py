"""Environments as a service: any vlm_envs id served through OpenEnv, and gymnasium clients for it.

* server: ``python -m vlm_envs serve --env ID`` (:mod:`vlm_envs.remote.server`);
* clients: :class:`RemoteEnv` (a gymnasium ``Env``), :func:`make_remote_vec` (a ``VectorEnv``)
  (:mod:`vlm_envs.remote.client`).

Both need ``pip install "vlm-envs[serve]"``. ``import vlm_envs.remote`` itself is light: OpenEnv is
imported when a client or the server is first used (docs/serving.md).
"""

from __future__ import annotations

from typing import Any

_CLIENT_NAMES = ("RemoteEnv", "RemoteVectorEnv", "ServerError", "SessionRefused", "TokenRefused", "make_remote_vec")
__all__ = list(_CLIENT_NAMES)


def __getattr__(name: str) -> Any:
    if name in _CLIENT_NAMES:
        from vlm_envs.remote import client  # raises DependencyNotInstalled without the serve extra

        return getattr(client, name)
    raise AttributeError(f"module 'vlm_envs.remote' has no attribute {name!r}")
