"""Where checkpoint records go: metrics.jsonl (the source of truth that the workflow reads), TensorBoard event
files in every run directory, and optionally Weights & Biases.

A small logger interface (``write(record)``, ``close()``) as in Acme: each backend gets the same flat record,
``{"step": int, "q_data": float, "heldout/q_data": float, "train/critic_loss": float, ...}``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from offrl.training import run_dir as rd

TENSORBOARD_DIR = "tensorboard"


class MetricsLogger:
    """Fan a record out to metrics.jsonl, TensorBoard and (when ``wandb_project`` is given) W&B.

    Args:
        run_dir: the run directory; event files go to ``run_dir/tensorboard``.
        config: the resolved config, sent to W&B as the run's config.
        wandb_project: W&B project name; None (default) keeps W&B off.
        tensorboard: write TensorBoard event files.

    Raises:
        RuntimeError: ``wandb_project`` is set but wandb is not installed.
    """

    def __init__(
        self,
        run_dir: str | Path,
        config: dict[str, Any] | None = None,
        wandb_project: str | None = None,
        tensorboard: bool = True,
    ) -> None:
        self.run_dir = Path(run_dir)
        self._tb = None
        self._wandb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / TENSORBOARD_DIR), flush_secs=30)
        if wandb_project:
            try:
                import wandb
            except ImportError as e:
                raise RuntimeError(
                    "W&B logging was asked for (--wandb-project) but wandb is not installed: "
                    "pip install 'offrl[wandb]'"
                ) from e
            self._wandb = wandb.init(project=wandb_project, dir=str(self.run_dir), config=config or {},
                                     name=self.run_dir.name, resume="allow")

    def write(self, record: dict[str, Any]) -> None:
        """Append the record to metrics.jsonl first (so a crash never loses it), then to the other backends."""
        rd.append_metrics(self.run_dir, record)
        step = int(record["step"])
        scalars = {
            k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        }
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
