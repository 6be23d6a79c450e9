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
    steps: int = 0,
    warmup_steps: int = 0,
    lr: float = 1e-3,
    batch_size: int = 16,
    max_tokens: int = 4096,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Train ``model`` in place on the assistant tokens of ``trajectories``.

    Loss: token-mean NLL (nats) over all assistant tokens of a batch of ``batch_size``
    trajectories. ``steps > 0`` runs that many optimizer steps on seeded random batches;
    otherwise ``epochs`` shuffled passes. Linear warmup over ``warmup_steps``, grad clip 1.0.
    Trajectories longer than ``max_tokens`` are dropped (with a log line). Returns the mean loss
    of every tenth of training (10 values, or fewer for short runs).
    """
    data = [t for t in trajectories if len(t.input_ids) <= max_tokens]
    if len(data) < len(trajectories):
        log.info("SFT: dropped %d trajectories longer than %d tokens", len(trajectories) - len(data), max_tokens)
    if not data:
        raise ValueError(f"SFT got no trajectories of at most {max_tokens} tokens")
    rng = random.Random(seed)
    if steps > 0:
        batches = [rng.sample(range(len(data)), min(batch_size, len(data))) for _ in range(steps)]
    else:
        batches = []
        for _ in range(epochs):
            order = list(range(len(data)))
            rng.shuffle(order)
            batches += [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup_steps) if warmup_steps else 1.0)
    model.train()
    device = next(model.parameters()).device
    bar = None
    if progress:
        from tqdm.auto import tqdm

        from agentrl.metrics import progress_interval

        bar = tqdm(total=len(batches), desc="sft", unit="step", leave=False, mininterval=progress_interval())
    losses: list[float] = []
    chunk = max(len(batches) // 10, 1)
    running = 0.0
    for i, rows in enumerate(batches, 1):
        batch = collate([data[j] for j in rows], pad_token_id=pad_token_id).to(device)
        mask = batch.loss_mask
        # collate right-pads: the causal mask alone is exact on real tokens (no padding mask, HF's
        # fast path), and the LM head runs only on the imitated (assistant) tokens
        logp, _ = sequence_logprobs(model, batch.input_ids, None, compute_entropy=False, positions=mask)
        loss = -(logp * mask).sum() / mask.sum().clamp(min=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running += loss.item()
        if i % chunk == 0 or i == len(batches):
            losses.append(running / (i - chunk * (len(losses))))
            running = 0.0
        if bar is not None:
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)  # drawn by update, at most every mininterval
            bar.update(1)
    if bar is not None:
        bar.close()
    model.eval()
    return losses
