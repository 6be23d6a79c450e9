"""The learner's update: one rollout batch in, optimizer steps out.

Per train_step (called by ``agentrl/train.py``):

1. no-grad forwards for what the algorithm needs at batch level: proximal logprobs (when
   there is more than one optimizer step per batch, or in async mode), proximal entropy
   (EMPG, proximal token masks), reference logprobs (KL);
2. ``algorithm.compute_advantages`` (phase 1);
3. ``ppo_epochs`` x ``mini_batches`` optimizer steps, each accumulating gradients over
   micro-batches of ``micro_batch_size`` sequences with the mini-batch's global token and
   sequence counts as denominators (so accumulation equals the whole mini-batch); a
   mini-batch with no trainable token (failed episodes, groups dropped by dynamic sampling)
   takes no optimizer step, and a batch with none skips the update (``policy/skipped_*``);
4. ``algorithm.end_train_step`` (controllers), and the ProRL reference reset when asked.

Metrics include per-turn entropy ``entropy/step/<k>`` and per-turn clip fractions
``policy/clipfrac/turn_<k>`` (k = assistant turn index); when proximal logprobs are recomputed
(async mode, several updates per batch), the train/inference mismatch against the sampler's
logprobs: ``policy/behavior_mismatch`` (mean |proximal - behavior|) and per turn
``policy/behavior_mismatch/turn_<k>`` and ``policy/behavior_kl/turn_<k>`` (k3 KL).

Data parallel (``dp_size > 1``, the FSDP2 learner ranks of ``agentrl.distributed``): every
rank receives the whole batch, computes the same advantages and mini-batch order, and runs
forward/backward on its share ``rows[dp_rank::dp_size]`` of each mini-batch with the whole
mini-batch's token and sequence counts as denominators; gradients are summed across ranks
(FSDP's reduce-scatter with divide factor 1), so the update equals the single-process one up to
float summation order. Metrics are summed across ranks before averaging.
"""

from __future__ import annotations

import copy
import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch

from agentrl.algorithms.algorithm import Algorithm, MicroBatch, RolloutBatch
from agentrl.config import TrainerConfig
from agentrl.types import TrainBatch

from .policy import sequence_logprobs

log = logging.getLogger(__name__)

MAX_TURN_METRICS = 64  # per-turn metric keys beyond this turn index are folded into the last


@dataclass
class LearnerState:
    step: int = 0


def _lr_lambda(cfg: TrainerConfig):
    def f(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "cosine":
            span = max(cfg.total_steps * cfg.ppo_epochs * cfg.mini_batches - cfg.warmup_steps, 1)
            return 0.5 * (1 + math.cos(math.pi * min(step - cfg.warmup_steps, span) / span))
        return 1.0

    return f


class Learner:
    """Owns the trainable policy, the optional reference model, the optimizer and the algorithm.

    Args:
        model: HF causal LM (trained in place).
        algorithm: the composed method (:func:`agentrl.algorithms.build_algorithm`).
        cfg: trainer settings.
        temperature: sampling temperature (logprobs and entropy are computed at it).
        async_mode: proximal logprobs are always recomputed (behavior != proximal) and
            behavior logprobs enter the loss (the decoupled objective; see
            ``algorithm.off_policy`` and docs/async.md).
        ref_model: a prebuilt frozen reference model (FSDP ranks shard their own, since a
            sharded module cannot be deep-copied); default: a deep copy of ``model``.
        dp_rank, dp_size, dp_all_reduce: data-parallel rank, world size and a callable that
            returns the sum of a tensor across ranks (see the module docstring).
    """

    def __init__(
        self, model: Any, algorithm: Algorithm, cfg: TrainerConfig, *, temperature: float = 1.0, async_mode: bool = False, seed: int = 0,
        ref_model: Any | None = None, dp_rank: int = 0, dp_size: int = 1, dp_all_reduce: Any | None = None,
    ) -> None:
        if dp_size > 1 and dp_all_reduce is None:
            raise ValueError(f"dp_size={dp_size} needs dp_all_reduce (a callable summing a tensor across ranks)")
        self.model = model
        self.algorithm = algorithm
        self.cfg = cfg
        self.temperature = temperature
        self.async_mode = async_mode
        self.dp_rank, self.dp_size, self.dp_all_reduce = dp_rank, dp_size, dp_all_reduce
        self.req = algorithm.requirements()
        self.ref_model = (ref_model if ref_model is not None else self._make_ref()) if self.req["ref_logprobs"] else None
        self.optimizer = self._make_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(cfg))
        self.generator = torch.Generator().manual_seed(seed)
        self.device = next(model.parameters()).device
        self.optimizer_steps = 0

    def _make_ref(self) -> Any:
        ref = copy.deepcopy(self.model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        return ref

    def _make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameters(), lr=self.cfg.lr, betas=self.cfg.betas, weight_decay=self.cfg.weight_decay)

    # ------------------------------------------------------------------ forwards
    def _forward(self, model: Any, batch: TrainBatch, *, entropy: bool, grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        with torch.set_grad_enabled(grad):
            return sequence_logprobs(
                model, batch.input_ids, batch.attention_mask, temperature=self.temperature,
                chunk_size=self.cfg.logits_chunk_size, compute_entropy=entropy,
            )

    def _no_grad_pass(self, model: Any, batch: TrainBatch, *, entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        logps, ents = [], []
        was = model.training
        model.eval()
        for start in range(0, batch.batch_size, self.cfg.micro_batch_size):
            mb = batch.select(slice(start, start + self.cfg.micro_batch_size))
            lp, ent = self._forward(model, mb, entropy=entropy, grad=False)
            logps.append(lp)
            ents.append(ent)
        model.train(was)
        return torch.cat(logps), (torch.cat(ents) if entropy else None)

    # ------------------------------------------------------------------ update
    def update(self, batch: TrainBatch) -> dict[str, float]:
        """One train_step on ``batch``; returns float metrics (host sync happens here, once)."""
        batch = batch.to(self.device)
        if not bool(batch.loss_mask.any()):  # every episode failed: nothing to learn, and no optimizer step
            log.warning("train_step with no trainable token (every episode failed or generated nothing): update skipped")
            return {"policy/skipped_update": 1.0, "policy/skipped_mini_batches": float(self.cfg.ppo_epochs * self.cfg.mini_batches)}
        steps_per_batch = self.cfg.ppo_epochs * self.cfg.mini_batches
        clip_to_behavior = self.algorithm.config.off_policy.proximal == "behavior"
        # async: the recomputed proximal is the decoupled objective's anchor, and measures the
        # train/inference mismatch even when the ratio is taken against the sampler
        need_proximal = (steps_per_batch > 1 and not clip_to_behavior) or self.async_mode
        proximal = proximal_entropy = None
        if need_proximal or self.req["rollout_entropy"]:
            proximal, proximal_entropy = self._no_grad_pass(self.model, batch, entropy=self.req["rollout_entropy"])
        mismatch = self._behavior_mismatch(proximal, batch) if need_proximal else None
        if clip_to_behavior:  # off_policy.proximal: behavior -- the ratio is against the sampler
            proximal = batch.behavior_logprobs
        ref = self._no_grad_pass(self.ref_model, batch, entropy=False)[0] if self.ref_model is not None else None
        rb = RolloutBatch(
            rewards=batch.rewards, group_ids=batch.group_ids, loss_mask=batch.loss_mask, turn_ids=batch.turn_ids,
            turn_rewards=batch.turn_rewards, anchor_ids=batch.anchor_ids if self.req["anchor_ids"] else None,
            correct=batch.success, terminated=batch.terminated, truncated=batch.truncated,
            proximal_logprobs=proximal if proximal is not None else batch.behavior_logprobs,
            behavior_logprobs=batch.behavior_logprobs, entropy=proximal_entropy,
        )
        adv = self.algorithm.compute_advantages(rb)
        sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=self.device))
        counts: dict[str, int] = defaultdict(int)
        turn_stats = torch.zeros((4, MAX_TURN_METRICS), device=self.device)  # entropy sum, tokens, clipped, tokens
        B = batch.batch_size
        mini_size = B // self.cfg.mini_batches
        grad_norms = []
        skipped = loss_steps = 0  # mini-batches without an optimizer step; with a loss computed
        for _ in range(self.cfg.ppo_epochs):
            order = torch.randperm(B, generator=self.generator) if self.cfg.mini_batches > 1 else torch.arange(B)
            # One host sync per epoch. A mini-batch with no trainable token takes no optimizer
            # step: even a zero gradient moves the weights through Adam's moments and weight
            # decay. When its rows still hold policy tokens (groups dropped by dynamic sampling)
            # the forward runs for the metrics (entropy describes the policy); when they hold
            # none (every episode in it failed), nothing runs.
            sel = order[: mini_size * self.cfg.mini_batches]
            flags = torch.stack([batch.loss_mask[sel].view(self.cfg.mini_batches, -1).any(dim=1),
                                 adv.loss_mask[sel].view(self.cfg.mini_batches, -1).any(dim=1)]).tolist()
            for m in range(self.cfg.mini_batches):
                has_tokens, trainable = flags[0][m], flags[1][m]
                if not trainable:
                    skipped += 1
                if not has_tokens:
                    continue
                loss_steps += 1
                rows = order[m * mini_size : (m + 1) * mini_size]
                mini_mask = adv.loss_mask[rows]
                num_tokens = mini_mask.sum()
                num_seqs = mini_mask.any(dim=1).sum()
                self.optimizer.zero_grad(set_to_none=True)
                local_rows = rows[self.dp_rank :: self.dp_size]  # all rows when dp_size == 1
                for start in range(0, len(local_rows), self.cfg.micro_batch_size):
                    idx = local_rows[start : start + self.cfg.micro_batch_size]
                    mb_batch = batch.select(idx)
                    # entropy is always computed: entropy/step/* and policy/entropy are logged for every method
                    logp, ent = self._forward(self.model, mb_batch, entropy=True, grad=True)  # losses may need entropy with grad
                    mb = MicroBatch(
                        logprobs=logp,
                        proximal_logprobs=proximal[idx] if proximal is not None else logp.detach(),
                        advantages=adv.advantages[idx],
                        loss_mask=adv.loss_mask[idx],
                        entropy=ent if self.req["entropy_grad"] else ent.detach(),
                        ref_logprobs=ref[idx] if ref is not None else None,
                        behavior_logprobs=mb_batch.behavior_logprobs if self.async_mode and not clip_to_behavior else None,
                        token_mask=adv.token_mask[idx] if adv.token_mask is not None else None,
                    )
                    loss, metrics = self.algorithm.loss(mb, num_tokens=num_tokens, num_seqs=num_seqs, micro_batch_fraction=len(idx) / len(rows))
                    if trainable:
                        loss.backward()
                    for k, v in metrics.items():
                        sums[k] = sums[k] + v.detach().float()
                        counts[k] += 1
                    self._turn_stats(turn_stats, mb, ent, mb_batch, metrics)
                if not trainable:
                    continue
                if self.cfg.grad_clip > 0:
                    norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
                    grad_norms.append(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP: a replicated DTensor
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer_steps += 1
        step = self.algorithm.end_train_step()
        reset = bool(step.reset_reference) if not isinstance(step.reset_reference, torch.Tensor) else bool(step.reset_reference.item())
        if reset:
            self.reset_reference()
        if self.dp_size > 1:
            sums, counts, turn_stats = self._reduce_across_ranks(sums, counts, turn_stats)
        # A micro-batch's loss is its share of the mini-batch loss (global denominators), so loss/*
        # is summed per optimizer step and averaged over steps: independent of micro_batch_size and
        # of the number of ranks. Other metrics are means over micro-batches.
        out = {k: float(sums[k] / (max(loss_steps, 1) if k.startswith("loss/") else counts[k])) for k in sums}
        out["policy/skipped_update"] = 0.0
        out["policy/skipped_mini_batches"] = float(skipped)
        out.update({k: float(v) for k, v in adv.metrics.items()})
        out.update({k: float(v) for k, v in step.metrics.items()})
        if grad_norms:
            out["policy/grad_norm"] = float(torch.stack(grad_norms).mean())
        out["policy/lr"] = float(self.scheduler.get_last_lr()[0])
        out["policy/reference_reset"] = float(reset)
        ent_sum, ent_n, clip_n, tok_n = turn_stats.cpu()
        for k in range(MAX_TURN_METRICS):
            if ent_n[k] > 0:
                out[f"entropy/step/{k}"] = float(ent_sum[k] / ent_n[k])
            if tok_n[k] > 0:
                out[f"policy/clipfrac/turn_{k}"] = float(clip_n[k] / tok_n[k])
        if mismatch is not None:
            abs_sum, k3_sum, n = mismatch.cpu()
            out["policy/behavior_mismatch"] = float(abs_sum.sum() / n.sum().clamp(min=1))
            for k in range(MAX_TURN_METRICS):
                if n[k] > 0:
                    out[f"policy/behavior_mismatch/turn_{k}"] = float(abs_sum[k] / n[k])
                    out[f"policy/behavior_kl/turn_{k}"] = float(k3_sum[k] / n[k])
        return out

    @staticmethod
    def _behavior_mismatch(proximal: torch.Tensor, batch: TrainBatch) -> torch.Tensor:
        """Train/inference logprob mismatch per assistant turn, ``[3, MAX_TURN_METRICS]``: sums
        of ``|proximal - behavior|`` and of the k3 estimate of KL(behavior || proximal)
        (``exp(d) - 1 - d``, d = proximal - behavior, clamped to [-20, 20]) over policy tokens,
        and their counts. Proximal is the learner's recomputation with the pre-update weights;
        behavior is what the engine reported when it sampled (possibly older weights, other
        numerics). On the device: no host sync."""
        mask = batch.loss_mask.flatten().float()
        d = (proximal - batch.behavior_logprobs).flatten().float().clamp(-20, 20)
        turns = batch.turn_ids.clamp(0, MAX_TURN_METRICS - 1).flatten()
        acc = torch.zeros((3, MAX_TURN_METRICS), device=proximal.device)
        acc[0].index_add_(0, turns, d.abs() * mask)
        acc[1].index_add_(0, turns, (torch.exp(d) - 1 - d) * mask)
        acc[2].index_add_(0, turns, mask)
        return acc

    def _reduce_across_ranks(self, sums: dict[str, torch.Tensor], counts: dict[str, int], turn_stats: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, int], torch.Tensor]:
        """Sum metric totals, counts and per-turn stats over data-parallel ranks (one all-reduce)."""
        keys = sorted(sums)
        n = len(keys)
        packed = torch.cat([
            torch.tensor([float(n)], device=self.device),
            torch.stack([sums[k] for k in keys]) if keys else torch.zeros(0, device=self.device),
            torch.tensor([float(counts[k]) for k in keys], device=self.device),
            turn_stats.flatten(),
        ])
        packed = self.dp_all_reduce(packed)
        if int(packed[0]) != n * self.dp_size:
            raise RuntimeError(f"learner ranks logged different metric keys (rank {self.dp_rank}: {keys}); they must run identical code paths")
        total = packed[1 : 1 + n]
        count = packed[1 + n : 1 + 2 * n]
        return {k: total[i] for i, k in enumerate(keys)}, {k: int(count[i]) for i, k in enumerate(keys)}, packed[1 + 2 * n :].view_as(turn_stats)

    def _clip_bounds(self, metrics: dict[str, torch.Tensor]) -> tuple[Any, Any] | None:
        """The ratio bounds the loss clipped at in this micro-batch, or None when the loss has
        no single pair (KL-Cov: no clipping; Archer: bounds per token entropy group)."""
        if "bapo/c_low" in metrics:  # BAPO feeds its searched absolute bounds to the PPO loss
            return metrics["bapo/c_low"], metrics["bapo/c_high"]
        name = self.algorithm.config.loss.name
        opts = {**self.algorithm.loss_entry.options(), **self.algorithm.config.loss.options}
        if name in ("ppo", "clip_cov"):
            return 1.0 - float(opts["eps_low"]), 1.0 + float(opts["eps_high"])
        if name == "cispo":  # the IS weight's cap (verl: 1 + eps_high; trl: eps_high itself)
            cap = float(opts["eps_high"]) if opts.get("semantics") == "trl" else 1.0 + float(opts["eps_high"])
            return 1.0 - float(opts["eps_low"]), cap
        return None

    def _turn_stats(self, acc: torch.Tensor, mb: MicroBatch, ent: torch.Tensor | None, rows: TrainBatch, metrics: dict[str, torch.Tensor]) -> None:
        """Per-turn entropy over every policy token of the rows (groups dropped by dynamic
        sampling included: it describes the policy), and per-turn clip fraction over the trained
        tokens: those whose ratio left the loss's clip range in the direction the clip acts on
        (A > 0 above the upper bound, A < 0 below the lower; CISPO: any capped weight).
        Scatter-adds on the device: no host sync."""
        turns = rows.turn_ids.clamp(0, MAX_TURN_METRICS - 1).flatten()
        if ent is not None:
            w_all = rows.loss_mask.flatten().float()
            acc[0].index_add_(0, turns, ent.detach().flatten().float() * w_all)
            acc[1].index_add_(0, turns, w_all)
        w = mb.loss_mask.flatten().float()
        bounds = self._clip_bounds(metrics)
        if bounds is None:
            return
        low, high = bounds
        ratio = torch.exp((mb.logprobs.detach() - mb.proximal_logprobs).clamp(-20, 20)).flatten()
        a = mb.advantages.flatten()
        if self.algorithm.config.loss.name == "cispo":
            clipped = (ratio > high) | (ratio < low)
        else:
            clipped = ((a > 0) & (ratio > high)) | ((a < 0) & (ratio < low))
        acc[2].index_add_(0, turns, clipped.float() * w)
        acc[3].index_add_(0, turns, w)

    def reset_reference(self) -> None:
        """ProRL: the reference becomes a copy of the current policy; optimizer state is reset."""
        if self.ref_model is not None:
            self.ref_model.load_state_dict(self.model.state_dict())
        self.optimizer = self._make_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(self.cfg), last_epoch=-1)
        log.info("reference policy reset to the current policy; optimizer state re-initialised")

    def close(self) -> None:
        """Release resources (nothing to do in-process; the Ray learner group stops its actors)."""

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "algorithm": self.algorithm.state_dict(),
            "generator": self.generator.get_state(),
            "optimizer_steps": self.optimizer_steps,
            "ref_model": self.ref_model.state_dict() if self.ref_model is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.algorithm.load_state_dict(state["algorithm"])
        self.generator.set_state(state["generator"])
        self.optimizer_steps = int(state["optimizer_steps"])
        if self.ref_model is not None and state.get("ref_model") is not None:
            self.ref_model.load_state_dict(state["ref_model"])
