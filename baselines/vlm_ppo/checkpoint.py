"""Checkpoints that load without running code: safetensors weights, ``weights_only`` optimizer, JSON state.

Layout of ``output_dir/checkpoints/update_NNNNN/``::

    model/                      the VLM (full weights, or the LoRA adapter) + processor, safetensors
    value_head.safetensors      the value head (PPO only: the critic-free algorithms have none)
    optimizer.pt                optimizer state: tensors and numbers only, loaded with weights_only=True
    scheduler.json              the LR scheduler's state
    trainer_state_<rank>.json   per process: update, env steps, the envs' episode seeds and texts
                                since their reset (restored by replay), running episode stats, RNG
                                states as plain numbers, and a digest of the trainable weights

``checkpoints/latest`` names the newest complete one. Nothing is unpickled on ``--resume``: a
crafted file fails to load instead of executing.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as JSON-serialisable numbers."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():  # sampling on a GPU draws from its generator
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 of the trainable parameters (equal across data-parallel processes that are in sync)."""
    h = hashlib.sha256()
    for name, p in sorted(module.named_parameters()):
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def checkpoint_dir(output_dir: str | Path, update: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"update_{update:05d}"


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    marker = Path(output_dir) / "checkpoints" / "latest"
    return marker.parent / marker.read_text().strip() if marker.exists() else None


def save_checkpoint(path: Path, accelerator, policy, optimizer, scheduler, trainer_state: dict[str, Any]) -> None:
    """Write one checkpoint (the main process writes the shared files, every process its own state)."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        policy.vlm.save_pretrained(path / "model", safe_serialization=True)
        policy.encoder.processor.save_pretrained(path / "model")
        if policy.value_head is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in policy.value_head.state_dict().items()},
                      str(path / "value_head.safetensors"))
        torch.save(optimizer.state_dict(), path / "optimizer.pt")
        (path / "scheduler.json").write_text(json.dumps(scheduler.state_dict()))
    state = {**trainer_state, "rng": rng_state(), "weights_sha256": weights_digest(policy)}
    (path / f"trainer_state_{accelerator.process_index}.json").write_text(json.dumps(state))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (path.parent / "latest").write_text(path.name)


def checkpoint_algo(path: Path) -> str:
    """The algorithm that wrote a checkpoint (checkpoints from before the choice existed are PPO's)."""
    return json.loads((path / "trainer_state_0.json").read_text()).get("algo", "ppo")


def load_training_state(path: Path, process_index: int, policy, optimizer, scheduler) -> dict[str, Any]:
    """Value head, optimizer and scheduler from ``path`` (the model itself is loaded by ``load_policy``);
    returns this process's trainer state (RNG already restored)."""
    from safetensors.torch import load_file

    if policy.value_head is not None:
        policy.value_head.load_state_dict(load_file(str(path / "value_head.safetensors")))
    optimizer.load_state_dict(_load_tensors_only(path / "optimizer.pt"))
    scheduler.load_state_dict(json.loads((path / "scheduler.json").read_text()))
    state = json.loads((path / f"trainer_state_{process_index}.json").read_text())
    set_rng_state(state["rng"])
    return state


def _load_tensors_only(file: Path) -> Any:
    try:
        return torch.load(file, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        raise ValueError(f"{file} holds more than tensors and numbers (refused: loading it could run code); "
                         f"was it written by this trainer?") from err
