"""``train_ppo`` with counters, for the multi-process tests (run under ``accelerate launch``).

``python -m tests.instrumented_ppo CONFIG_JSON OUT_DIR [--fast-clock-on-rank R] [--any-backend]``
trains with the given ``Config`` fields and writes ``OUT_DIR/process_<rank>.json``: real optimizer steps (torch's
own step hook), backward passes that close an accumulation window (``accelerator.sync_gradients``,
where a DeepSpeed engine steps), the ``generate`` calls this process made for held-out evaluation,
and the metrics it computed for itself before they were combined. ``--fast-clock-on-rank R`` runs
that process's trainer clock 1,000x fast, so it alone believes a time limit has passed;
``--any-backend`` lifts the start-up refusal of DeepSpeed and FSDP, to watch a DeepSpeed engine step.
"""

from __future__ import annotations

import json
import os
import sys
import time
import types
from pathlib import Path

from accelerate import Accelerator
from torch.optim.optimizer import register_optimizer_step_post_hook

from baselines.vlm_ppo import train
from baselines.vlm_ppo.config import Config
from baselines.vlm_ppo.policy import ActorCritic


def main(config_json: str, out_dir: str, fast_clock_rank: int | None = None, any_backend: bool = False) -> None:
    cfg = Config(**json.loads(config_json))
    if any_backend:
        train.check_parallelism = lambda accelerator: None
    counts = {"optimizer_steps": 0, "backwards": 0, "window_ends": 0, "eval_generates": 0, "local_metrics": []}

    def count_step(*_):
        counts["optimizer_steps"] += 1

    register_optimizer_step_post_hook(count_step)
    backward = Accelerator.backward

    def counting_backward(self, loss, **kwargs):
        counts["backwards"] += 1
        counts["window_ends"] += bool(self.sync_gradients)
        return backward(self, loss, **kwargs)

    Accelerator.backward = counting_backward
    rollout_metrics = train.rollout_metrics

    def recording_metrics(run, *args):
        metrics = rollout_metrics(run, *args)
        counts["local_metrics"].append(metrics)
        return metrics

    train.rollout_metrics = recording_metrics
    evaluate, generate, evaluating = train.evaluate, ActorCritic.generate, [False]

    def flagged_evaluate(*args, **kwargs):
        evaluating[0] = True
        try:
            return evaluate(*args, **kwargs)
        finally:
            evaluating[0] = False

    def counting_generate(self, *args, **kwargs):
        counts["eval_generates"] += evaluating[0]
        return generate(self, *args, **kwargs)

    train.evaluate, ActorCritic.generate = flagged_evaluate, counting_generate
    if fast_clock_rank == int(os.environ.get("RANK", 0)):
        origin = time.time()  # only the trainer's clock: torch.distributed keeps the real one
        train.time = types.SimpleNamespace(time=lambda: origin + 1000 * (time.time() - origin))
    train.train_ppo(cfg)
    rank = Accelerator().process_index
    (Path(out_dir) / f"process_{rank}.json").write_text(json.dumps(counts))


if __name__ == "__main__":
    args = sys.argv[1:]
    fast = int(args[args.index("--fast-clock-on-rank") + 1]) if "--fast-clock-on-rank" in args else None
    main(args[0], args[1], fast, "--any-backend" in args)
