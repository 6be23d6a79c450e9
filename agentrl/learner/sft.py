"""Supervised warm start: next-token NLL on the assistant tokens of expert trajectories."""

from __future__ import annotations

import logging
import random
from typing import Any

import torch

from agentrl.types import Trajectory, collate

from .policy import sequence_logprobs

log = logging.getLogger(__name__)


def sft(
    model: Any,
    trajectories: list[Trajectory],
    *,
    pad_token_id: int,
    epochs: int = 3,
    lr: float = 1e-3,
    batch_size: int = 16,
    max_tokens: int = 4096,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Train ``model`` in place; returns the mean loss of each epoch (nats per assistant token).

    Loss: token-mean over all assistant tokens of a batch of ``batch_size`` trajectories.
    Trajectories longer than ``max_tokens`` are dropped (with a log line).
    """
    data = [t for t in trajectories if len(t.input_ids) <= max_tokens]
    if len(data) < len(trajectories):
        log.info("SFT: dropped %d trajectories longer than %d tokens", len(trajectories) - len(data), max_tokens)
    if not data:
        raise ValueError(f"SFT got no trajectories of at most {max_tokens} tokens")
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    device = next(model.parameters()).device
    losses = []
    steps = epochs * ((len(data) + batch_size - 1) // batch_size)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="sft", unit="step", leave=False)
    for _ in range(epochs):
        order = list(range(len(data)))
        rng.shuffle(order)
        total, count = 0.0, 0
        for start in range(0, len(order), batch_size):
            batch = collate([data[i] for i in order[start : start + batch_size]], pad_token_id=pad_token_id).to(device)
            logp, _ = sequence_logprobs(model, batch.input_ids, batch.attention_mask, compute_entropy=False)
            mask = batch.loss_mask
            loss = -(logp * mask).sum() / mask.sum().clamp(min=1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total += loss.item()
            count += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
        losses.append(total / max(count, 1))
    if bar is not None:
        bar.close()
    model.eval()
    return losses
