"""Checkpoints: model (HF format), optimizer, scheduler, controllers, RNG, data position, step.

A checkpoint is written to a temporary folder and renamed into place, so a run killed at any
moment (SIGKILL included) leaves either the previous complete checkpoint or the new one.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

PREFIX = "step_"


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def save_checkpoint(out_dir: str | Path, step: int, *, model: Any, tokenizer: Any, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``checkpoints/step_<step>`` atomically and prune all but the newest ``keep``."""
    root = Path(out_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:06d}"
    tmp = root / f".tmp_{PREFIX}{step:06d}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp / "model")
    tokenizer.save_pretrained(tmp / "model")
    torch.save({**state, "step": step, "rng": rng_state()}, tmp / "state.pt")
    (tmp / "COMPLETE").write_text(str(step))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(p for p in root.iterdir() if p.name.startswith(PREFIX))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder, or None."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return None
    done = [p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / "COMPLETE").exists()]
    return max(done, key=lambda p: int(p.name[len(PREFIX):])) if done else None


def load_state(ckpt: str | Path) -> dict[str, Any]:
    return torch.load(Path(ckpt) / "state.pt", weights_only=False)
