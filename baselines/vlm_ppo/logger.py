"""Metrics to ``metrics.csv`` (one row per update), TensorBoard (``tb/``) and a PNG learning curve."""

from __future__ import annotations

import csv
import math
from pathlib import Path


class MetricsLogger:
    """Rows keyed by update (``-1`` is the evaluation before training); the CSV is rewritten on every
    call so new columns (evaluation) can appear; ``resume_after`` keeps the rows of a resumed run."""

    def __init__(self, out_dir: str | Path, enabled: bool = True, resume_after: int | None = None):
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self.csv_path = self.out_dir / "metrics.csv"
        self.rows: list[dict] = []
        self.last: dict = {}
        self.writer = None
        if not enabled:
            return
        if resume_after is not None and self.csv_path.exists():
            with open(self.csv_path) as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["update"]) <= resume_after]
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out_dir / "tb"))
        except ImportError:  # pragma: no cover - tensorboard is in the train extra
            self.writer = None

    def log(self, update: int, env_steps: int, metrics: dict) -> None:
        self.last = {**self.last, **metrics}
        if not self.enabled:
            return
        self.rows.append({"update": update, "env_steps": env_steps, **metrics})
        if self.writer is not None:
            for k, v in metrics.items():
                self.writer.add_scalar(k, v, env_steps)
        columns: list[str] = []
        for row in self.rows:
            columns += [k for k in row if k not in columns]
        with open(self.csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)
        if any(k.startswith("eval/") for k in metrics):
            plot_curve(self.csv_path, self.out_dir / "curve.png")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(csv_path: str | Path) -> list[dict]:
    """The rows of a ``metrics.csv`` as dicts of strings (empty cells for metrics not logged that update)."""
    with open(csv_path) as f:
        return list(csv.DictReader(f))


def plot_curve(csv_path: str | Path, png_path: str | Path, title: str | None = None) -> None:
    """Held-out greedy/sampled success and the rolling training success against env steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(csv_path)

    def series(key):
        pts = [(float(r["env_steps"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
        return [p for p in pts if not math.isnan(p[1])]

    fig, ax = plt.subplots(figsize=(7, 4))
    greedy = "eval/greedy_start_success" if series("eval/greedy_start_success") else "eval/greedy_success"
    for key, label, style in ((greedy, "held-out, greedy" + (" (every start state)" if "start" in greedy else ""), "o-"),
                              ("eval/sampled_success", "held-out, sampled", "s--"),
                              ("charts/train_success", "training episodes (rolling)", "-")):
        pts = series(key)
        if pts:
            ax.plot(*zip(*pts), style, label=label, alpha=0.6 if key.startswith("charts") else 1.0)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("success rate")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title or Path(csv_path).parent.name)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
