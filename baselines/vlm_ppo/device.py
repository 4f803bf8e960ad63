"""One device and one precision for every command (``ppo``, ``sft``, ``eval``, ``demo``), both from here.

The device is accelerate's: each process's own GPU under ``accelerate launch``, the GPU of a plain
``python -m`` run when one is present, else the CPU. Every command places its model there with
:func:`training_device` and every tensor the trainer builds follows the model.

Precision belongs to the trainer: ``--dtype`` loads the weights, LoRA adapters stay fp32, and the
value head and the LM head run in fp32 (:class:`baselines.vlm_ppo.policy.FP32Linear`). accelerate's
own mixed precision (``accelerate config``, ``accelerate launch --mixed_precision``,
``ACCELERATE_MIXED_PRECISION``) is overridden with ``no``, as TRL's trainers do with their own
precision flags: its bf16 autocast would run the fp32 heads in bf16, and its fp16 ``GradScaler``
would unscale twice under the per-group gradient clipping.
"""

from __future__ import annotations

import os
import warnings

import torch


def make_accelerator(**kwargs):
    """An ``accelerate.Accelerator`` with mixed precision off (``kwargs`` pass through).

    A mixed precision asked for by accelerate's config or environment is overridden with a warning
    that names ``--dtype``; a DeepSpeed config that turns on its own bf16/fp16 is refused.
    """
    from accelerate import Accelerator

    asked = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    accelerator = Accelerator(mixed_precision="no", **kwargs)
    if asked != "no" and accelerator.is_main_process:
        warnings.warn(f"accelerate's mixed_precision={asked!r} (from `accelerate config`, `--mixed_precision` or "
                      "ACCELERATE_MIXED_PRECISION) is ignored: the trainer owns precision. --dtype sets the weights' "
                      "dtype (bfloat16 needs --lora-r > 0); LoRA adapters, the value head and the LM head stay fp32",
                      stacklevel=2)
    if accelerator.mixed_precision != "no":
        raise ValueError(f"the DeepSpeed config turns on {accelerator.mixed_precision}: the trainer owns precision "
                         "(--dtype); set its 'bf16' and 'fp16' sections to enabled: false")
    return accelerator


def check_training_dtype(dtype: str) -> None:
    """Refuse a weights dtype no command can train in (``ppo``, ``sft``; evaluation takes any)."""
    if dtype == "float16":
        raise ValueError("dtype='float16': fp16 needs loss scaling, which the trainer does not do "
                         "(gradients underflow); use --dtype bfloat16")


def training_device() -> torch.device:
    """The device every command runs its model on: accelerate's device for this process."""
    return make_accelerator().device


def use_deterministic_algorithms() -> None:
    """Deterministic kernels for every command of this process (``--deterministic``).

    cuBLAS picks reduction orders that change between runs unless its workspace is fixed, and some
    CUDA kernels (scatter-add, index-add in backward passes) accumulate with atomics: without this,
    two GPU runs with one seed agree in distribution, not bit for bit. Must run before the first
    cuBLAS call, so the CLI calls it right after parsing. Strict: an op with no deterministic
    kernel raises (naming it) rather than silently breaking the promise of a bit-identical run.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
