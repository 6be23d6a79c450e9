"""The learner's update: one rollout batch in, optimizer steps out.

Per train_step (called by ``agentrl/train.py``):

1. no-grad forwards for what the algorithm needs at batch level, each only when it is needed:

   * proximal logprobs (the ratio's anchor) when there is more than one optimizer step per
     batch (``ppo_epochs * mini_batches > 1``, unless ``off_policy.proximal: behavior``) or in
     async mode (decoupled objective, train/inference mismatch metrics). In sync mode on one
     process the rows of the first mini-batch of the first epoch are left out of this pass: the
     weights have not moved when their training forward runs, so that forward's detached
     logprobs are their proximal logprobs (with ``mini_batches: 1`` the pass is skipped); phase 1
     then reads behavior logprobs for ``rollout/nll``. Kept whole when phase 1 needs them (the
     Skywork ``nll`` measure), when proximal entropy is computed anyway, and for a model with
     dropout (its training forward is not the eval-mode snapshot);
   * proximal entropy (with proximal logprobs from the same forward) when phase 1 needs it:
     EMPG's step entropy, ``entropy_source: proximal`` shaping and token masks;
   * reference logprobs when a KL term, a KL-using loss or a controller (ProRL) needs them;
2. ``algorithm.compute_advantages`` (phase 1);
3. ``ppo_epochs`` x ``mini_batches`` optimizer steps, each accumulating gradients over
   micro-batches of at most ``micro_batch_size`` sequences with the mini-batch's global token and
   sequence counts as denominators (so accumulation equals the whole mini-batch); a
   mini-batch with no trainable token (failed episodes, groups dropped by dynamic sampling)
   takes no optimizer step, and a batch with none skips the update (``policy/skipped_*``);
4. ``algorithm.end_train_step`` (controllers), and the ProRL reference reset when asked.

Forwards: every forward (no-grad or training) is cut to its rows' longest real length and,
for right-padded rows (``collate``'s layout), runs without a padding mask: the causal mask alone
gives the masked values on every real token, and HF takes its unmasked attention path. Results
are zero-padded back to the batch width, so losses see ``[rows, T]`` as before (the default
``seq-mean-token-sum-norm`` constant is the batch's T, Clip-Cov's random draw its shape).
``trainer.group_by_length`` assigns a mini-batch's rows to micro-batches by length (longest
first) and, on one process, closes a micro-batch early before padding would be more than half of
it (:meth:`Learner._micro_batches`), so a long episode only widens its own, smaller micro-batch;
the learner does so only for methods whose update does not depend on the split
(:func:`grouping_blocker`; means over micro-batches among the metrics can move). With FSDP ranks
the split stays ``micro_batch_size`` rows (ranks must run the same number of forwards). The
no-grad passes always go by length (their values are per row).

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

Uneven shares (a short batch: dynamic sampling with a round limit, failed episodes, any batch
size): every update is shape-uniform across ranks by *padding*, not trimming. A rank whose
share of a mini-batch has fewer micro-batches than rank 0's (``ceil(ceil(rows / dp_size) /
micro_batch_size)``, computed by every rank from the whole mini-batch, no communication) runs
padding micro-batches: one row of the mini-batch with ``loss_mask`` all False, through the same
forward, ``algorithm.loss`` (whose controllers may all-reduce per micro-batch: BAPO) and
backward (zero gradient), and through :meth:`Learner._mini_batch_stats` (zero counts). So
every rank runs the same forwards, backwards and collectives (FSDP all-gathers and
reduce-scatters, the algorithm's all-reduces, ``begin_mini_batch``/``end_mini_batch``, the
gradient-norm and metric reductions). Padding is applied after the advantages and outside the
mini-batch denominators: group baselines, token and sequence counts, controller statistics and
logged metrics (a padding micro-batch's metrics and per-turn stats are not accumulated; it only
registers the metric keys) are those of the real rows, so the update equals the single-process
one on the same rows (tests/distributed/test_fsdp.py, 2 gloo ranks, short batches). Trimming to
a multiple of ``mini_batches x dp_size`` would drop episodes (and make the update depend on the
number of ranks); padding costs at most one extra micro-batch forward per mini-batch on the
ranks with the smaller share. Rows beyond ``mini_batches x (B // mini_batches)`` are left out of
each epoch on every rank, as on one process (the epoch's random order decides which).
"""

from __future__ import annotations

import copy
import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from agentrl.algorithms.algorithm import Algorithm, MicroBatch, RolloutBatch
from agentrl.algorithms.registry import AGGREGATIONS
from agentrl.config import TrainerConfig
from agentrl.types import TrainBatch

from .episode_view import EpisodeView

from .policy import sequence_logprobs

log = logging.getLogger(__name__)

MAX_TURN_METRICS = 64  # per-turn metric keys beyond this turn index are folded into the last


def grouping_blocker(algorithm: Algorithm, *, ref_logprobs: bool) -> str | None:
    """Why assigning a mini-batch's rows to micro-batches by length could change the update, or
    None when it cannot. The loss uses mini-batch-wide denominators (and mini-batch statistics,
    :meth:`Algorithm.mini_batch_stats`), so for a method built from per-token terms the
    micro-batch losses sum to the same mini-batch loss whatever the split. Each component says
    whether it is such a method (``split_invariant`` on its registry entry or controller class;
    checked in tests/algorithms/test_invariance.py); the exceptions select per loss call:
    Clip-Cov and KL-Cov (covariance means, N_valid, top-k/random draw per call), BAPO (bounds
    searched per micro-batch), ``forking_tokens`` with ``entropy_source: current`` (quantile
    over the call's tokens). Unknown (plugin) components count as batch-dependent.
    ``ref_logprobs`` is kept for callers; no shipped component depends on it any more."""
    del ref_logprobs
    cfg = algorithm.config
    if not algorithm.loss_entry.extra.get("split_invariant", False):
        return f"loss {cfg.loss.name!r} is computed per micro-batch"
    if not AGGREGATIONS.get(cfg.aggregation.name).extra.get("split_invariant", False):
        return f"aggregation {cfg.aggregation.name!r} is not known to be split-invariant"
    for c in algorithm.controllers:
        if not c.split_invariant:
            return f"controller {c.name!r} measures per micro-batch"
    if algorithm._token_mask_source() == "current":
        return f"token mask {cfg.token_mask.name!r} with entropy_source current thresholds per micro-batch"
    for entry, _ in algorithm._shaping_with_source("current"):
        if not entry.extra.get("split_invariant", False):
            return f"shaping {entry.name!r} with entropy_source current is not known to be per token"
    return None


def _has_dropout(model: Any) -> bool:
    """True when a training-mode forward can differ from the eval-mode one (dropout)."""
    if any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules()):
        return True
    config = getattr(getattr(model, "lm", model), "config", None)
    return any(float(getattr(config, k, 0.0) or 0.0) > 0 for k in ("attention_dropout", "hidden_dropout", "resid_pdrop", "attn_pdrop"))


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
        blocker = grouping_blocker(algorithm, ref_logprobs=self.ref_model is not None)
        self.group_by_length = bool(cfg.group_by_length) and blocker is None
        if cfg.group_by_length and blocker is not None:
            log.info("trainer.group_by_length: off for this method (%s); micro-batches keep the shuffled order", blocker)
        # episode-mean-token-mean: per-row counts of the row's whole episode, per mini-batch
        self._episode_agg = "episode_tokens" in AGGREGATIONS.get(algorithm.config.aggregation.name).inputs
        self._dropout = _has_dropout(model)
        self._lengths: list[int] = []  # per update: real length of each row (host), and the layout
        self._right_padded = False

    def _make_ref(self) -> Any:
        ref = copy.deepcopy(self.model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        return ref

    def _make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameters(), lr=self.cfg.lr, betas=self.cfg.betas, weight_decay=self.cfg.weight_decay)

    # ------------------------------------------------------------------ forwards
    def _read_layout(self, batch: TrainBatch) -> None:
        """Row lengths on the host and whether every row is right-padded (one sync per update)."""
        mask = batch.attention_mask.bool()
        lengths = mask.sum(dim=1)
        T = mask.shape[1]
        right = (mask == (torch.arange(T, device=mask.device) < lengths.unsqueeze(1))).all()
        host = torch.cat([lengths, right.long().view(1)]).tolist()
        self._lengths, self._right_padded = host[:-1], bool(host[-1])

    def _episode_counts(self, batch: TrainBatch, rows: torch.Tensor, mini_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(episode_tokens [B] float, num_episodes 0-dim)`` for one mini-batch: for each of
        its ``rows`` (global row indices [R] long), the trained tokens (``mini_mask`` [R, T] bool)
        of all the mini-batch's rows of the same episode (``batch.episode_ids``); 0 on rows
        outside it. ``num_episodes``: episodes with a trained token in the mini-batch. Computed
        on the whole mini-batch before its first micro-batch, so the split into micro-batches
        (and data-parallel ranks) cannot change them. No host sync."""
        B = batch.batch_size
        ep = batch.episode_ids.to(self.device)[rows]
        per_episode = torch.zeros(B, device=self.device).index_add_(0, ep, mini_mask.sum(dim=1).float())
        counts = torch.zeros(B, device=self.device)
        counts[rows] = per_episode[ep]
        return counts, (per_episode > 0).sum()

    def _by_length(self, rows: list[int]) -> list[int]:
        """``rows`` longest first (stable: equal lengths keep their order)."""
        return sorted(rows, key=lambda r: -self._lengths[r])

    def _micro_batches(self, rows: list[int], *, by_tokens: bool) -> list[list[int]]:
        """Split ``rows`` into micro-batches of at most ``micro_batch_size`` rows. ``by_tokens``
        (rows sorted longest first): also close a micro-batch before padding would make up more
        than half of it (its rows x its first, longest row > 2 x its real tokens), so one long
        episode shares its micro-batch only with rows that pay for little of its width. Memory
        stays under the fixed split's ``micro_batch_size`` x T."""
        n = self.cfg.micro_batch_size
        if not by_tokens or not rows:
            return [rows[i : i + n] for i in range(0, len(rows), n)]
        out: list[list[int]] = [[]]
        real = 0
        for r in rows:
            cur, length = out[-1], max(self._lengths[r], 1)
            if cur and (len(cur) >= n or (len(cur) + 1) * max(self._lengths[cur[0]], 1) > 2 * (real + length)):
                out.append(cur := [])
                real = 0
            cur.append(r)
            real += length
        return out

    def _forward(self, model: Any, batch: TrainBatch, rows: list[int], *, entropy: bool, grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(logprobs, entropy)`` ``[len(rows), T]`` of batch rows ``rows``. Right-padded rows are
        cut to their longest real length and run without a padding mask (exact on real tokens;
        see :func:`sequence_logprobs`), then zero-padded back to the batch width T. Other
        layouts run at full width with the mask. Values are computed at the policy tokens
        (``batch.loss_mask``) only and are 0 elsewhere."""
        T = batch.input_ids.shape[1]
        index = torch.tensor(rows, dtype=torch.long, device=batch.input_ids.device)
        if self._right_padded:
            width = min(T, max(2, max(self._lengths[r] for r in rows)))
            ids, mask = batch.input_ids[index, :width], None
        else:
            width, ids, mask = T, batch.input_ids[index], batch.attention_mask[index]
        # the LM head only where a loss or metric reads the values: the policy tokens (prompt,
        # tool output and padding positions come back 0; every consumer masks them)
        positions = batch.loss_mask[index, :width]
        with torch.set_grad_enabled(grad):
            logp, ent = sequence_logprobs(
                model, ids, mask, temperature=self.temperature,
                chunk_size=self.cfg.logits_chunk_size, compute_entropy=entropy, positions=positions,
            )
            if width < T:
                logp = F.pad(logp, (0, T - width))
                ent = F.pad(ent, (0, T - width)) if ent is not None else None
        return logp, ent

    def _no_grad_pass(self, model: Any, batch: TrainBatch, *, entropy: bool, rows: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """No-grad ``(logprobs, entropy)`` ``[B, T]`` for ``rows`` (default all), in eval mode,
        micro-batches taken by length (:meth:`_micro_batches` with ``by_tokens``; values are per
        row, so the grouping never matters); rows not computed are 0."""
        B, T = batch.input_ids.shape
        logps = torch.zeros((B, T), dtype=torch.float32, device=batch.input_ids.device)
        ents = torch.zeros_like(logps) if entropy else None
        todo = self._by_length(list(range(B)) if rows is None else list(rows))
        was = model.training
        model.eval()
        for chunk in self._micro_batches(todo, by_tokens=True):  # every rank splits alike (same lengths)
            index = torch.tensor(chunk, dtype=torch.long, device=logps.device)
            lp, ent = self._forward(model, batch, chunk, entropy=entropy, grad=False)
            logps[index] = lp.float()
            if ents is not None:
                ents[index] = ent.float()
        model.train(was)
        return logps, ents

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
        self._read_layout(batch)
        B = batch.batch_size
        # mini-batch m is rows [bounds[m], bounds[m + 1]) of an epoch's order: equal parts when
        # mini_batches divides B (always, with one row per episode: config check), near-equal
        # ones when rows are turn samples, whose count varies
        M = self.cfg.mini_batches
        bounds = [m * B // M for m in range(M + 1)]
        # the mini-batch orders of every epoch, drawn up front (the same draws as one per epoch)
        orders = [(torch.randperm(B, generator=self.generator) if self.cfg.mini_batches > 1 else torch.arange(B)).tolist()
                  for _ in range(self.cfg.ppo_epochs)]
        # Sync mode, one process: the first mini-batch's training forward runs before any step, so
        # its detached logprobs are those rows' proximal logprobs; the no-grad pass skips them.
        defer = (need_proximal and not self.async_mode and not self.req["rollout_entropy"] and not self.req["rollout_logprobs"]
                 and self.dp_size == 1 and not self._dropout)
        deferred: set[int] = set(orders[0][: bounds[1]]) if defer else set()
        proximal = proximal_entropy = None
        if need_proximal or self.req["rollout_entropy"]:
            rest = [r for r in range(B) if r not in deferred]
            proximal, proximal_entropy = self._no_grad_pass(self.model, batch, entropy=self.req["rollout_entropy"], rows=rest)
        proximal_for_mismatch = proximal
        if clip_to_behavior:  # off_policy.proximal: behavior -- the ratio is against the sampler
            proximal = batch.behavior_logprobs
        ref = self._no_grad_pass(self.ref_model, batch, entropy=False)[0] if self.ref_model is not None else None
        rb = RolloutBatch(
            rewards=batch.rewards, group_ids=batch.group_ids, loss_mask=batch.loss_mask, turn_ids=batch.turn_ids,
            turn_rewards=batch.turn_rewards, anchor_ids=batch.anchor_ids if self.req["anchor_ids"] else None,
            correct=batch.success, terminated=batch.terminated, truncated=batch.truncated,
            proximal_logprobs=proximal if proximal is not None and not defer else batch.behavior_logprobs,
            behavior_logprobs=batch.behavior_logprobs, entropy=proximal_entropy,
        )
        if batch.turn_samples:  # rows are turn samples: phase 1 on their episodes (episode_view.py)
            view = EpisodeView.of(batch.loss_mask, batch.episode_ids)
            adv = view.rows_result(self.algorithm.compute_advantages(view.rollout_batch(rb)))
        else:
            adv = self.algorithm.compute_advantages(rb)
        # loss/* terms: summed per optimizer step (a micro-batch's loss is its share of the
        # mini-batch loss); every other metric: weighted by the micro-batch's trained tokens, so
        # token means (policy/entropy, clip fractions, ratio) are means over the step's tokens,
        # whatever the micro-batching (a mean of micro-batch means is not: policy/entropy of one
        # step's batch read 0.147 with length grouping and 0.168 without)
        sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=self.device))
        counts: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=self.device))
        turn_stats = torch.zeros((4, MAX_TURN_METRICS), device=self.device)  # entropy sum, tokens, clipped, tokens
        grad_norms = []
        skipped = loss_steps = 0  # mini-batches without an optimizer step; with a loss computed
        for epoch in range(self.cfg.ppo_epochs):
            order_list = orders[epoch]
            order = torch.tensor(order_list, dtype=torch.long)
            # One host sync per epoch. A mini-batch with no trainable token takes no optimizer
            # step: even a zero gradient moves the weights through Adam's moments and weight
            # decay. When its rows still hold policy tokens (groups dropped by dynamic sampling)
            # the forward runs for the metrics (entropy describes the policy); when they hold
            # none (every episode in it failed), nothing runs.
            parts = [order[bounds[m] : bounds[m + 1]] for m in range(M)]
            flags = torch.stack([torch.stack([batch.loss_mask[p].any() for p in parts]),
                                 torch.stack([adv.loss_mask[p].any() for p in parts])]).tolist()
            for m in range(self.cfg.mini_batches):
                has_tokens, trainable = flags[0][m], flags[1][m]
                if not trainable:
                    skipped += 1
                if not has_tokens:
                    continue
                loss_steps += 1
                row_list = order_list[bounds[m] : bounds[m + 1]]
                rows = parts[m].to(self.device)
                mini_mask = adv.loss_mask[rows]
                num_tokens = mini_mask.sum()
                num_seqs = mini_mask.any(dim=1).sum()
                episode_tokens, num_episodes = self._episode_counts(batch, rows, mini_mask) if self._episode_agg else (None, None)
                self.optimizer.zero_grad(set_to_none=True)
                if self.group_by_length:  # the split does not change this method's update (grouping_blocker)
                    row_list = self._by_length(row_list)
                local_rows = row_list[self.dp_rank :: self.dp_size]  # all rows when dp_size == 1
                fill_proximal = defer and epoch == 0 and m == 0
                # by tokens only on one process: FSDP ranks must run the same number of forwards
                chunks = self._micro_batches(local_rows, by_tokens=self.group_by_length and self.dp_size == 1)
                pads = self._padding_chunks(len(row_list), len(chunks))  # uneven shares: see the module docstring
                if self.req["mini_batch_stats"]:  # counts over the whole mini-batch before its first loss
                    self.algorithm.begin_mini_batch(self._mini_batch_stats(batch, chunks, adv, proximal, pads=pads, pad_row=row_list[0]))
                for chunk, pad in [(c, False) for c in chunks] + [([row_list[0]], True)] * pads:
                    idx = torch.tensor(chunk, dtype=torch.long, device=self.device)
                    mb_batch = batch.select(idx)
                    # entropy is always computed: entropy/step/* and policy/entropy are logged for every method
                    logp, ent = self._forward(self.model, batch, chunk, entropy=True, grad=True)  # losses may need entropy with grad
                    if fill_proximal:  # no step taken yet: the current logprobs are the proximal ones
                        proximal[idx] = logp.detach().float()
                    mb = MicroBatch(
                        logprobs=logp,
                        proximal_logprobs=proximal[idx] if proximal is not None else logp.detach(),
                        advantages=adv.advantages[idx],
                        loss_mask=torch.zeros_like(adv.loss_mask[idx]) if pad else adv.loss_mask[idx],
                        entropy=ent if self.req["entropy_grad"] else ent.detach(),
                        ref_logprobs=ref[idx] if ref is not None else None,
                        behavior_logprobs=mb_batch.behavior_logprobs if self.async_mode and not clip_to_behavior else None,
                        token_mask=adv.token_mask[idx] if adv.token_mask is not None else None,
                        episode_tokens=episode_tokens[idx] if episode_tokens is not None else None,
                    )
                    out = self.algorithm.loss(mb, num_tokens=num_tokens, num_seqs=num_seqs, num_episodes=num_episodes,
                                              micro_batch_fraction=0.0 if pad else len(idx) / len(rows))
                    loss, metrics = out
                    if pad:  # no loss, but the backward's reduce-scatters must run on this rank too
                        if trainable:  # a zero gradient through every unit (logp is finite; the loss is not used)
                            (logp.sum() * 0.0).backward()
                        for k in metrics:  # the keys only (every rank reduces the same set), no values
                            sums[k], counts[k] = sums[k], counts[k]
                        continue
                    if trainable:
                        loss.backward()
                    weight = mb.loss_mask.sum().float().clamp(min=1e-6)  # a micro-batch without trained tokens: ~0 weight
                    for k, v in metrics.items():
                        w = 1.0 if k.startswith("loss/") else weight
                        sums[k] = sums[k] + v.detach().float() * w
                        counts[k] = counts[k] + w
                    self._turn_stats(turn_stats, mb, ent, mb_batch, out.clipped)
                self.algorithm.end_mini_batch()
                if not trainable:
                    continue
                if self.cfg.grad_clip > 0:
                    norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
                    grad_norms.append(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP: a replicated DTensor
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer_steps += 1
        # after the loop: with a deferred pass, the first mini-batch filled in its rows' proximal
        mismatch = self._behavior_mismatch(proximal_for_mismatch, batch) if need_proximal else None
        step = self.algorithm.end_train_step()
        reset = bool(step.reset_reference) if not isinstance(step.reset_reference, torch.Tensor) else bool(step.reset_reference.item())
        if reset:
            self.reset_reference()
        if self.dp_size > 1:
            sums, counts, turn_stats = self._reduce_across_ranks(sums, counts, turn_stats)
        # A micro-batch's loss is its share of the mini-batch loss (global denominators), so loss/*
        # is summed per optimizer step and averaged over steps: independent of micro_batch_size and
        # of the number of ranks. Other metrics are token-weighted means over micro-batches (above).
        out = {k: float(sums[k] / (max(loss_steps, 1) if k.startswith("loss/") else counts[k].clamp(min=1e-12))) for k in sums}
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

    def _reduce_across_ranks(self, sums: dict[str, torch.Tensor], counts: dict[str, torch.Tensor], turn_stats: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
        """Sum metric totals, weights and per-turn stats over data-parallel ranks (one all-reduce)."""
        keys = sorted(sums)
        n = len(keys)
        packed = torch.cat([
            torch.tensor([float(n)], device=self.device),
            torch.stack([sums[k] for k in keys]) if keys else torch.zeros(0, device=self.device),
            torch.stack([torch.as_tensor(counts[k], dtype=torch.float32, device=self.device) for k in keys]) if keys else torch.zeros(0, device=self.device),
            turn_stats.flatten(),
        ])
        packed = self.dp_all_reduce(packed)
        if int(packed[0]) != n * self.dp_size:
            raise RuntimeError(f"learner ranks logged different metric keys (rank {self.dp_rank}: {keys}); they must run identical code paths")
        total = packed[1 : 1 + n]
        count = packed[1 + n : 1 + 2 * n]
        return {k: total[i] for i, k in enumerate(keys)}, {k: count[i] for i, k in enumerate(keys)}, packed[1 + 2 * n :].view_as(turn_stats)

    def _padding_chunks(self, rows: int, chunks: int) -> int:
        """How many padding micro-batches this rank runs for a mini-batch of ``rows`` rows split
        into ``chunks`` micro-batches here: rank 0 holds the largest share (``rows[r::dp_size]``)
        and FSDP ranks split by ``micro_batch_size`` alone, so every rank reaches rank 0's count.
        0 on one process."""
        if self.dp_size == 1:
            return 0
        most = -(-(-(-rows // self.dp_size)) // self.cfg.micro_batch_size)  # ceil(ceil(rows / dp) / n)
        return most - chunks

    def _mini_batch_stats(self, batch: TrainBatch, chunks: list[list[int]], adv: Any, proximal: torch.Tensor | None,
                          *, pads: int = 0, pad_row: int = 0) -> dict[str, torch.Tensor]:
        """The mini-batch statistics (:meth:`Algorithm.mini_batch_stats`) summed over this rank's
        ``chunks``: from a no-grad forward of the current policy when they need one (same rows,
        same mode as the training forward that follows, so the same values), else from the masks
        alone. One extra forward (no backward) per mini-batch, only for methods that ask
        (``requirements()["mini_batch_stats"]``: Archer with its KL term, EntroPIC, token masks
        with ``normalize: kept``). ``pads`` padding micro-batches (row ``pad_row``, loss mask all
        False: zero counts, but the same forwards and keys on every rank)."""
        totals: dict[str, torch.Tensor] = {}
        for chunk, pad in [(c, False) for c in chunks] + [([pad_row], True)] * pads:
            idx = torch.tensor(chunk, dtype=torch.long, device=self.device)
            if self.req["stats_forward"]:
                logp, ent = self._forward(self.model, batch, chunk, entropy=True, grad=False)
            else:
                logp, ent = torch.zeros_like(batch.behavior_logprobs[idx]), None
            mb = MicroBatch(logprobs=logp, proximal_logprobs=proximal[idx] if proximal is not None else logp,
                            advantages=adv.advantages[idx],
                            loss_mask=torch.zeros_like(adv.loss_mask[idx]) if pad else adv.loss_mask[idx], entropy=ent,
                            token_mask=adv.token_mask[idx] if adv.token_mask is not None else None)
            for k, v in self.algorithm.mini_batch_stats(mb).items():
                totals[k] = totals[k] + v if k in totals else v
        return totals

    def _turn_stats(self, acc: torch.Tensor, mb: MicroBatch, ent: torch.Tensor | None, rows: TrainBatch, clipped: torch.Tensor | None) -> None:
        """Per-turn entropy over every policy token of the rows (groups dropped by dynamic
        sampling included: it describes the policy), and per-turn clip fraction over the trained
        tokens: those the loss reports as clipped (``LossOutput.clipped``: ratio out of the clip
        range in the direction the clip acts on; CISPO: any capped weight); nothing when the loss
        has no clipping. Scatter-adds on the device: no host sync."""
        turns = rows.turn_ids.clamp(0, MAX_TURN_METRICS - 1).flatten()
        if ent is not None:
            w_all = rows.loss_mask.flatten().float()
            acc[0].index_add_(0, turns, ent.detach().flatten().float() * w_all)
            acc[1].index_add_(0, turns, w_all)
        if clipped is None:
            return
        w = mb.loss_mask.flatten().float()
        clipped = clipped.flatten()
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
