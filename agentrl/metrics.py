"""Metrics sinks: JSONL always, TensorBoard when installed, W&B when asked for (the
``agentrl[wandb]`` extra; docs/logging.md). Keys follow docs/design.md §7 (``loss/*``,
``policy/*``, ``entropy/step/*``, ``rollout/*``, ``env/<id>/*``, ``sandbox/*``, ``time/*``,
``throughput/*``); one row per train_step with ``train_step`` set."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_said_no_tensorboard = False
"""Whether this process has logged the "TensorBoard is not installed" info line: once is enough
(``agentrl compare`` runs several trainings in one process)."""


def progress_interval() -> float:
    """Seconds between progress-bar redraws (tqdm's ``mininterval``): tqdm's 0.1 on a
    terminal; 30 when stderr is a file or a pipe, where every redraw is a line of the log."""
    import sys

    return 0.1 if sys.stderr.isatty() else 30.0


class MetricsLogger:
    """Append-only metrics for one run folder.

    ``truncate_after(step)`` drops rows of train_steps after ``step`` (used on resume, so a
    run killed after logging but before checkpointing never shows a train_step twice).
    """

    def __init__(self, out_dir: str | Path, *, tensorboard: bool | None = None, wandb: bool = False, run_name: str = "run",
                 config: dict[str, Any] | None = None, wandb_project: str = "agentrl", wandb_entity: str | None = None,
                 wandb_tags: Sequence[str] = (), wandb_mode: str | None = None) -> None:
        global _said_no_tensorboard
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"
        self._tb = None
        self._wandb = None
        if tensorboard is not False:  # None: when installed; True: asked for
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.dir / "tensorboard"))
            except ImportError as e:  # not a dependency: only the [test] extra installs it
                if tensorboard:
                    log.warning(
                        "logging.tensorboard is true but TensorBoard cannot be imported (%s); no tensorboard/ events are written. "
                        "Install it with `pip install tensorboard` (or `pip install -e '.[test]'`), or set logging.tensorboard=false.", e
                    )
                elif not _said_no_tensorboard:
                    _said_no_tensorboard = True
                    log.info("TensorBoard is not installed: metrics go to metrics.jsonl only (`pip install tensorboard` adds tensorboard/ events)")
            except Exception as e:
                log.warning("TensorBoard disabled: %s: %s", type(e).__name__, e)
        if wandb:
            try:
                import wandb as wb

                # create_new: a run of its own even when another logger's run is still open;
                # files under the run folder unless WANDB_DIR says otherwise
                self._wandb = wb.init(project=wandb_project, entity=wandb_entity, name=run_name, tags=list(wandb_tags), mode=wandb_mode,
                                      config=config or {}, dir=None if os.environ.get("WANDB_DIR") else str(self.dir), reinit="create_new")
            except Exception as e:
                log.warning("W&B disabled, metrics go to metrics.jsonl only: %s: %s (`wandb login` for online runs, "
                            "or logging.wandb_mode=offline)", type(e).__name__, e)

    @classmethod
    def for_run(cls, out_dir: str | Path, cfg: Any) -> MetricsLogger:
        """The logger of a training run: ``cfg`` is a :class:`agentrl.config.TrainConfig`,
        whose ``logging`` section picks the sinks and whose resolved values go to W&B as the
        run's config."""
        from agentrl.config import to_dict

        lc = cfg.logging
        return cls(out_dir, tensorboard=lc.tensorboard, wandb=lc.wandb, run_name=lc.wandb_name or cfg.run.name, config=to_dict(cfg),
                   wandb_project=lc.wandb_project, wandb_entity=lc.wandb_entity, wandb_tags=lc.wandb_tags, wandb_mode=lc.wandb_mode)

    def truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        rows = [line for line in self.path.read_text().splitlines() if line.strip()]
        kept = [r for r in rows if json.loads(r).get("train_step", -1) <= step]
        self.path.write_text("".join(r + "\n" for r in kept))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"train_step": step, **{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
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


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
