"""The composition layer the learner calls: config -> :class:`Algorithm`, used in two phases.

Order of calls per train_step (see docs/add_method.md for a full example)::

    algo = build_algorithm(AlgorithmConfig.from_dict(cfg["algorithm"]))
    # the learner computes what algo.requirements() asks for (entropy, ref logprobs, ...)
    adv = algo.compute_advantages(rollout_batch)          # phase 1, once per rollout batch
    for mini_batch in mini_batches:
        n_tok = adv.loss_mask[mini].sum()                  # global denominators (a tensor, no sync)
        if algo.requirements()["mini_batch_stats"]:        # sums over the whole mini-batch first
            algo.begin_mini_batch(sum_dicts(algo.mini_batch_stats(mb) for mb in no_grad(micro_batches)))
        for mb in micro_batches(mini_batch):
            loss, metrics = algo.loss(mb, num_tokens=n_tok, num_seqs=n_seq,
                                      micro_batch_fraction=mb_rows / mini_rows)   # phase 2
            loss.backward()
        algo.end_mini_batch()
        optimizer.step()
        step = algo.end_train_step()                       # controllers update
        if step.reset_reference: ...                        # ProRL: copy policy -> reference, reset optimizer

Phase 1 (:meth:`Algorithm.compute_advantages`): overlong shaping, dynamic-sampling filter,
estimator, turn-level shaping (EMPG), broadcast to tokens via turn ids, token-level shaping and
batch-scope token masks. Phase 2 (:meth:`Algorithm.loss`): the policy loss with its token mask,
controller effects, KL and entropy terms. Neither phase syncs with the host.

Mini-batch statistics. Every term is normalised over the whole mini-batch, so how the learner
splits it (micro-batch size, data-parallel ranks) never changes the update. Most denominators
are known from the masks before any forward (``num_tokens``, ``num_seqs``); a few depend on the
current policy over the whole mini-batch (Archer's entropy-group counts, EntroPIC's mini-batch
entropy and high-probability count, the kept-token count of a token mask with ``normalize:
kept``). For those the learner runs :meth:`Algorithm.mini_batch_stats` on each micro-batch of a
no-grad forward (the same rows and weights as the training forward), then
:meth:`Algorithm.begin_mini_batch` with the sums (all-reduced across ranks), then the
micro-batches' :meth:`Algorithm.loss`, then :meth:`Algorithm.end_mini_batch`. A
:meth:`Algorithm.loss` call outside such a bracket is its own mini-batch.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from .aggregation import make_aggregate
from .config import AlgorithmConfig
from .controllers import Controller, ControllerOutput, LossView, StepStats
from .credit import (broadcast_turns, default_turn_ids, discounted_turn_returns, place_on_last_turn,
                     turn_means, turn_token_counts)
from .kl import kl_estimate
from .losses import LossOutput
from .ops import clamped_log_ratio, masked_mean, masked_sum, reduce_sums, zero_masked
from .registry import CONTROLLERS, ESTIMATORS, LOSSES, SHAPING, TOKEN_MASKS
from .sampling import dynamic_sampling_keep, overlong_penalty

__all__ = ["RolloutBatch", "AdvantageResult", "MicroBatch", "StepResult", "Algorithm", "build_algorithm", "LossOutput"]

AllReduce = Callable[[Tensor], Tensor]


@dataclass
class RolloutBatch:
    """Phase-1 input: one rollout batch of B trajectories (rows), T padded tokens, S turns.

    rewards [B] float: trajectory reward (return). group_ids [B] long: same task = same group.
    loss_mask [B, T] bool: True only on policy-generated tokens. turn_ids [B, T] long: assistant
    turn index of each policy token, -1 elsewhere (default: 0 on every policy token).
    turn_rewards [B, S] float: per-turn env rewards (optional). anchor_ids [B, S] long: per-turn
    anchor-state key (hash of the observation the turn was taken from; GiGPO). correct [B] bool:
    task success (``acc`` for dynamic sampling, PSR/NSR); default ``rewards > 0.5``.
    response_lengths [B] long: response tokens counted against the budget (overlong shaping;
    default ``loss_mask.sum(1)``). terminated / truncated [B] bool (Gymnasium semantics).
    proximal_logprobs / behavior_logprobs [B, T]: for the Skywork NLL measurement.
    entropy [B, T]: proximal-policy entropy at the sampling temperature, recomputed before the
    update (EMPG step entropy; ``entropy_source: proximal`` shaping and token masks).
    A row whose loss_mask is all False (a failed episode) is left out of group statistics.
    """

    rewards: Tensor
    group_ids: Tensor
    loss_mask: Tensor
    turn_ids: Tensor | None = None
    turn_rewards: Tensor | None = None
    anchor_ids: Tensor | None = None
    correct: Tensor | None = None
    response_lengths: Tensor | None = None
    terminated: Tensor | None = None
    truncated: Tensor | None = None
    proximal_logprobs: Tensor | None = None
    behavior_logprobs: Tensor | None = None
    entropy: Tensor | None = None

    def validate(self) -> None:
        """Shape/dtype checks (host-side metadata only); ValueError names the field."""
        if self.loss_mask.dim() != 2 or self.loss_mask.dtype != torch.bool:
            raise ValueError(f"loss_mask must be [B, T] bool, got {tuple(self.loss_mask.shape)} {self.loss_mask.dtype}")
        b, t = self.loss_mask.shape
        for name in ("rewards", "group_ids", "correct", "response_lengths", "terminated", "truncated"):
            v = getattr(self, name)
            if v is not None and tuple(v.shape) != (b,):
                raise ValueError(f"{name} must be [B={b}], got {tuple(v.shape)}")
        for name in ("turn_ids", "proximal_logprobs", "behavior_logprobs", "entropy"):
            v = getattr(self, name)
            if v is not None and tuple(v.shape) != (b, t):
                raise ValueError(f"{name} must be [B, T]={b, t}, got {tuple(v.shape)}")
        s = None
        for name in ("turn_rewards", "anchor_ids"):
            v = getattr(self, name)
            if v is not None:
                if v.dim() != 2 or v.shape[0] != b or (s is not None and v.shape[1] != s):
                    raise ValueError(f"{name} must be [B={b}, S] with one S for all per-turn fields, got {tuple(v.shape)}")
                s = v.shape[1]
        if self.group_ids.dtype.is_floating_point:
            raise ValueError("group_ids must be an integer tensor")


@dataclass
class AdvantageResult:
    """Phase-1 output. advantages [B, T] float32 (0 off policy tokens and on dropped rows);
    loss_mask [B, T] bool (the input mask with dropped rows cleared: use it in phase 2);
    keep [B] bool; rewards [B] (after overlong shaping); turn_advantages [B, S];
    token_mask [B, T] bool or None (batch-scope forking mask; pass it in the MicroBatch);
    metrics: detached 0-dim tensors."""

    advantages: Tensor
    loss_mask: Tensor
    keep: Tensor
    rewards: Tensor
    turn_advantages: Tensor
    token_mask: Tensor | None = None
    metrics: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class MicroBatch:
    """Phase-2 input, all [B, T]. logprobs (current policy, with grad); proximal_logprobs (the
    clipping snapshot; equals behavior when fully on-policy; use ``logprobs.detach()`` for a
    single on-policy update); advantages and loss_mask from :class:`AdvantageResult`;
    entropy (current policy, with grad if an entropy bonus is used); ref_logprobs; behavior_logprobs
    (async: the sampler's); token_mask (the batch-scope mask slice, if any); episode_tokens
    ``[B]`` float (policy tokens of each row's whole episode in the mini-batch, for the
    ``episode-mean-token-mean`` aggregation; None: each row is its own episode)."""

    logprobs: Tensor
    proximal_logprobs: Tensor
    advantages: Tensor
    loss_mask: Tensor
    entropy: Tensor | None = None
    ref_logprobs: Tensor | None = None
    behavior_logprobs: Tensor | None = None
    token_mask: Tensor | None = None
    episode_tokens: Tensor | None = None


@dataclass
class StepResult:
    """``end_train_step`` output: metrics and ``reset_reference`` (bool or 0-dim bool tensor:
    when true the learner copies the policy into the reference model and re-initialises the
    optimizer state, ProRL)."""

    metrics: dict[str, Tensor]
    reset_reference: bool | Tensor = False


def _stat(x: Tensor) -> Tensor:
    return x.detach().float()


class Algorithm:
    """Built from an :class:`AlgorithmConfig`; holds the controllers and the RNG.

    ``all_reduce`` (optional) sums a tensor across data-parallel ranks in place-or-returned
    form; it makes BAPO's bound search, EntroPIC's micro-batch entropy and the step statistics
    global. Without it everything is local to the process.
    """

    def __init__(self, config: AlgorithmConfig, *, all_reduce: AllReduce | None = None) -> None:
        config.validate()
        self.config = config
        self.all_reduce = all_reduce
        self.estimator = ESTIMATORS.get(config.estimator.name)
        self.loss_entry = LOSSES.get(config.loss.name)
        self._loss_takes_generator = "generator" in inspect.signature(self.loss_entry.obj).parameters
        self.token_mask = None if config.token_mask is None else TOKEN_MASKS.get(config.token_mask.name)
        self.shaping = [(SHAPING.get(s.name), dict(s.options)) for s in config.shaping]
        self.controllers: list[Controller] = [CONTROLLERS.get(c.name).obj(**c.options) for c in config.controllers]
        self._generators: dict[str, torch.Generator] = {}
        self._generator_states: dict[str, Tensor] = {}
        self._step = 0
        self._reset_accumulators()
        self._rollout_nll: Tensor | None = None
        self._rollout_entropy: Tensor | None = None
        self._mini_stats: dict[str, Tensor] | None = None
        self._req = self.requirements()
        # KL to the reference is computed in phase 2 only when it is used: as a loss term or by a
        # controller (ProRL). A loss with its own KL (Archer) reports it under its own keys.
        self._track_kl = config.kl.coef > 0 or any("ref_logprobs" in c.requires for c in self.controllers)

    # ------------------------------------------------------------------ requirements
    def _shaping_with_source(self, source: str) -> list[tuple[Any, dict[str, Any]]]:
        return [(e, o) for e, o in self.shaping
                if e.extra.get("level") == "token" and o.get("entropy_source", e.options().get("entropy_source")) == source]

    def _token_mask_source(self) -> str | None:
        if self.token_mask is None:
            return None
        return self.config.token_mask.options.get("entropy_source", self.token_mask.options().get("entropy_source"))

    def _loss_options(self) -> dict[str, Any]:
        return {**self.loss_entry.options(), **self.config.loss.options}

    def _kept_normalize(self) -> bool:
        """A token mask with ``normalize: kept``: the policy loss is averaged over the kept tokens."""
        if self.token_mask is None:
            return False
        return {**self.token_mask.options(), **self.config.token_mask.options}.get("normalize", "all") == "kept"

    def _loss_stats(self) -> Callable[..., dict[str, Tensor]] | None:
        return self.loss_entry.extra.get("stats")

    def _loss_needs_ref(self) -> bool:
        if "ref_logprobs" not in self.loss_entry.inputs:
            return False
        opts = {**self.loss_entry.options(), **self.config.loss.options}
        coefs = [v for k, v in opts.items() if k.startswith("kl_coef")]
        return any(float(c) != 0 for c in coefs) if coefs else True

    def requirements(self) -> dict[str, bool]:
        """What the learner must provide. ``entropy``: current-policy entropy in micro-batches;
        ``entropy_grad``: that entropy must carry gradient; ``rollout_entropy``: proximal entropy
        in the RolloutBatch; ``ref_logprobs``: reference logprobs in micro-batches;
        ``anchor_ids``: per-turn anchor keys; ``rollout_logprobs``: proximal logprobs in the
        RolloutBatch (Skywork NLL measure); ``mini_batch_stats``: call :meth:`mini_batch_stats`
        over the mini-batch and :meth:`begin_mini_batch` before its micro-batches;
        ``stats_forward``: those statistics need the current policy's forward (logprobs,
        entropy) rather than only the masks."""
        ctrl_req = set().union(*(c.requires for c in self.controllers)) if self.controllers else set()
        entropy_grad = self.config.entropy_coef > 0 or any(c.needs_entropy_grad for c in self.controllers)
        needs_current = ("entropy" in self.loss_entry.inputs or "entropy" in ctrl_req or entropy_grad
                         or self._token_mask_source() == "current" or bool(self._shaping_with_source("current")))
        probe = self._stats_probe()
        loss_stats = self._loss_stats() is not None and bool(self._loss_stats()(
            **{k: probe[k] for k in self.loss_entry.inputs}, **self._loss_options()))
        ctrl_stats = any(type(c).mini_batch_stats is not Controller.mini_batch_stats for c in self.controllers)
        needs_rollout = (any(e.extra.get("level") == "turn" for e, _ in self.shaping)
                         or self._token_mask_source() == "proximal" or bool(self._shaping_with_source("proximal")))
        return {
            "entropy": needs_current,
            "entropy_grad": entropy_grad,
            "rollout_entropy": needs_rollout,
            "ref_logprobs": self.config.kl.coef > 0 or "ref_logprobs" in ctrl_req or self._loss_needs_ref(),
            "anchor_ids": "anchor_ids" in self.estimator.inputs,
            "rollout_logprobs": "rollout_logprobs" in ctrl_req,
            "mini_batch_stats": loss_stats or ctrl_stats or self._kept_normalize(),
            "stats_forward": loss_stats or ctrl_stats or (self._kept_normalize() and self._token_mask_source() == "current"),
        }

    @staticmethod
    def _stats_probe() -> dict[str, Tensor]:
        """A one-token input for asking a loss's ``stats`` function whether it has any."""
        one = torch.ones(1, 1)
        return {"logprobs": -one, "proximal_logprobs": -one, "advantages": one, "entropy": one,
                "loss_mask": torch.ones(1, 1, dtype=torch.bool), "ref_logprobs": -one}

    def generator(self, device: torch.device) -> torch.Generator:
        """The seeded generator for ``device`` (created on first use, restored from state)."""
        key = str(torch.device(device))
        if key not in self._generators:
            g = torch.Generator(device=device)
            g.manual_seed(int(self.config.seed))
            if key in self._generator_states:
                g.set_state(self._generator_states.pop(key))
            self._generators[key] = g
        return self._generators[key]

    # ------------------------------------------------------------------ phase 1
    def shape_rewards(self, batch: RolloutBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """Trajectory rewards after DAPO's soft overlong punishment (if enabled)."""
        rewards = batch.rewards.float()
        ov = self.config.overlong
        if not ov.enabled:
            return rewards, {}
        lengths = batch.response_lengths if batch.response_lengths is not None else batch.loss_mask.sum(dim=1)
        pen = overlong_penalty(response_lengths=lengths, max_response_tokens=ov.max_response_tokens,
                               buffer_tokens=ov.buffer_tokens, penalty_factor=ov.penalty_factor)
        return rewards + pen, {"overlong/penalty_mean": _stat(pen.mean()),
                               "overlong/penalized_frac": _stat((pen < 0).float().mean())}

    def keep_groups(self, batch: RolloutBatch, rewards: Tensor | None = None) -> Tensor:
        """``keep [B] bool`` from dynamic sampling (uniform groups dropped) and overlong
        filtering (truncated rows dropped). The training loop may call this per generation round."""
        keep = torch.ones_like(batch.rewards, dtype=torch.bool)
        ds = self.config.dynamic_sampling
        if ds.enabled:
            if ds.metric == "acc":
                metric = batch.correct.float() if batch.correct is not None else (batch.rewards > 0.5).float()
            else:
                metric = rewards if rewards is not None else self.shape_rewards(batch)[0]
            keep &= dynamic_sampling_keep(metric=metric, group_ids=batch.group_ids, valid=batch.loss_mask.any(dim=1))
        if self.config.overlong.filter_truncated and batch.truncated is not None:
            keep &= ~batch.truncated.bool()
        return keep

    def _turn_returns(self, batch: RolloutBatch, rewards: Tensor, turn_mask: Tensor) -> Tensor:
        if self.config.credit.turn_rewards == "env" and batch.turn_rewards is not None:
            tr = torch.where(turn_mask, batch.turn_rewards.float(), torch.zeros((), device=turn_mask.device))
            extra = rewards - batch.rewards.float()  # overlong penalty goes to the last turn
            tr = tr + place_on_last_turn(extra, turn_mask)
        else:
            tr = place_on_last_turn(rewards, turn_mask)
        return discounted_turn_returns(tr, turn_mask, self.config.credit.gamma)

    def compute_advantages(self, batch: RolloutBatch) -> AdvantageResult:
        """Phase 1: rewards -> per-token advantages for the whole rollout batch."""
        batch.validate()
        req = self._req
        if req["rollout_entropy"] and batch.entropy is None:
            raise ValueError("this algorithm needs RolloutBatch.entropy (proximal-policy entropy per token)")
        if req["anchor_ids"] and batch.anchor_ids is None:
            raise ValueError(f"estimator {self.estimator.name!r} needs RolloutBatch.anchor_ids [B, S]")
        loss_mask = batch.loss_mask
        b, t = loss_mask.shape
        turn_ids = batch.turn_ids if batch.turn_ids is not None else default_turn_ids(loss_mask)
        torch._assert_async(((turn_ids >= 0) | ~loss_mask).all(), "loss_mask is True on a token with turn id -1")
        s = next((x.shape[1] for x in (batch.turn_rewards, batch.anchor_ids) if x is not None), t)
        torch._assert_async(((turn_ids < s) | ~loss_mask).all(), "a turn id is >= S, the width of turn_rewards/anchor_ids")
        turn_mask = turn_token_counts(turn_ids, loss_mask, s) > 0
        rewards, metrics = self.shape_rewards(batch)
        keep = self.keep_groups(batch, rewards)
        inputs: dict[str, Any] = {
            "rewards": rewards, "group_ids": batch.group_ids, "correct": batch.correct, "turn_mask": turn_mask,
            "anchor_ids": batch.anchor_ids, "token_counts": loss_mask.sum(dim=1) * keep,
            "valid": loss_mask.any(dim=1),
        }
        if "turn_returns" in self.estimator.inputs:
            inputs["turn_returns"] = self._turn_returns(batch, rewards, turn_mask)
        out = self.estimator.obj(**{k: inputs[k] for k in self.estimator.inputs}, **self.config.estimator.options)
        metrics.update(out.metrics)
        if out.keep is not None:
            keep = keep & out.keep
        if out.level == "trajectory":
            turn_adv = torch.where(turn_mask, out.advantages.float().unsqueeze(1), torch.zeros((), device=turn_mask.device))
        else:
            turn_adv = out.advantages.float()
        active = turn_mask & keep.unsqueeze(1)
        mask_out = loss_mask & keep.unsqueeze(1)
        for entry, opts in self.shaping:
            if entry.extra.get("level") == "turn":
                step_h, _ = turn_means(batch.entropy.float(), turn_ids, mask_out, s)
                turn_adv, m = entry.obj(turn_advantages=turn_adv, step_entropy=step_h, turn_mask=active, **opts)
                metrics.update(m)
        adv = broadcast_turns(turn_adv, turn_ids, mask_out)
        for entry, opts in self._shaping_with_source("proximal"):
            adv, m = entry.obj(advantages=adv, entropy=batch.entropy, loss_mask=mask_out, **opts)
            metrics.update(m)
        token_mask = None
        if self._token_mask_source() == "proximal":
            token_mask, m = self.token_mask.obj(entropy=batch.entropy, loss_mask=mask_out, **self.config.token_mask.options)
            metrics.update(m)
        lp = batch.proximal_logprobs if batch.proximal_logprobs is not None else batch.behavior_logprobs
        self._rollout_nll = None if lp is None else _stat(-masked_mean(lp.float(), mask_out))
        self._rollout_entropy = None if batch.entropy is None else _stat(masked_mean(batch.entropy.float(), mask_out))
        metrics.update({
            "advantages/mean": _stat(masked_mean(adv, mask_out)),
            "advantages/abs_max": _stat(zero_masked(adv, mask_out).abs().amax()) if adv.numel() else torch.zeros(()),
            "rollout/kept_frac": _stat(keep.float().mean()),
        })
        if self._rollout_nll is not None:
            metrics["rollout/nll"] = self._rollout_nll
        if self._rollout_entropy is not None:
            metrics["rollout/entropy"] = self._rollout_entropy
        return AdvantageResult(adv.float(), mask_out, keep, rewards, turn_adv, token_mask, metrics)

    # ------------------------------------------------------------------ phase 2
    def _reset_accumulators(self) -> None:
        self._acc: dict[str, Tensor] = {}

    def _accumulate(self, key: str, total: Tensor, count: Tensor) -> None:
        v = torch.stack([total.detach().float(), count.detach().float()])
        self._acc[key] = v if key not in self._acc else self._acc[key] + v

    def _kept(self, mb: MicroBatch) -> Tensor | None:
        """The token mask's kept tokens ``[B, T]`` bool for this micro-batch (current scope:
        from its entropy; batch scope: the slice it carries), or None without a token mask."""
        if self._token_mask_source() == "current":
            return self.token_mask.obj(entropy=mb.entropy, loss_mask=mb.loss_mask, **self.config.token_mask.options)[0]
        return None if mb.token_mask is None else mb.token_mask & mb.loss_mask

    def mini_batch_stats(self, mb: MicroBatch) -> dict[str, Tensor]:
        """Per-call sums (0-dim float32 tensors, keyed ``<component>/<what>``) of the counts the
        components normalise by over the whole mini-batch; :meth:`begin_mini_batch` takes their
        totals. ``mb`` as for :meth:`loss` (no gradient needed). Empty when nothing needs them."""
        out: dict[str, Tensor] = {}
        loss_mask = mb.loss_mask
        if self._kept_normalize():
            kept = self._kept(mb)
            if kept is None:
                raise ValueError("token mask normalize: kept needs the kept tokens: MicroBatch.token_mask (batch scope)")
            loss_mask = kept
            out["token_mask/kept_tokens"] = kept.sum().float()
            out["token_mask/kept_seqs"] = kept.any(dim=1).sum().float()
        fn = self._loss_stats()
        if fn is not None:
            tensors = {"logprobs": mb.logprobs.detach(), "proximal_logprobs": mb.proximal_logprobs, "advantages": mb.advantages,
                       "loss_mask": loss_mask, "entropy": mb.entropy, "ref_logprobs": mb.ref_logprobs}
            out.update(fn(**{k: tensors[k] for k in self.loss_entry.inputs}, **self._loss_options()))
        if self.controllers:
            view = LossView(logprobs=mb.logprobs.detach(), proximal_logprobs=mb.proximal_logprobs, advantages=mb.advantages,
                            loss_mask=mb.loss_mask, aggregate=make_aggregate(self.config.aggregation.name),
                            entropy=None if mb.entropy is None else mb.entropy.detach(), all_reduce=self.all_reduce)
            for c in self.controllers:
                out.update(c.mini_batch_stats(view))
        return out

    def begin_mini_batch(self, stats: dict[str, Tensor]) -> None:
        """Open a mini-batch with the totals of :meth:`mini_batch_stats` over its micro-batches
        on this rank (summed across ranks here, one all-reduce); controllers take theirs."""
        self._mini_stats = reduce_sums(stats, self.all_reduce)
        for c in self.controllers:
            c.begin_mini_batch(self._mini_stats)

    def end_mini_batch(self) -> None:
        """Close the mini-batch opened by :meth:`begin_mini_batch`."""
        self._mini_stats = None

    def loss(self, mb: MicroBatch, *, num_tokens: Tensor | float | None = None, num_seqs: Tensor | float | None = None,
             micro_batch_fraction: float | Tensor = 1.0, num_episodes: Tensor | float | None = None) -> LossOutput:
        """Phase 2: the scalar loss of one micro-batch and its metrics.

        Call exactly once per micro-batch in training order (controllers such as EntroPIC update
        their state here). ``num_tokens`` / ``num_seqs``: denominators of the whole mini-batch
        (see :mod:`.aggregation`); ``num_episodes``: episodes in the mini-batch (with
        ``mb.episode_tokens``, for ``episode-mean-token-mean``); ``micro_batch_fraction``: rows
        here / rows in the mini-batch.
        Metric keys: ``loss/total``, ``loss/policy``, ``loss/kl``, ``loss/entropy_bonus``,
        ``loss/controllers``, ``policy/ratio_mean``, ``policy/approx_kl``,
        ``policy/clipfrac_low``, ``policy/clipfrac_high``; ``policy/entropy`` when entropy is
        given; ``policy/kl_ref`` when a KL term or controller uses the reference;
        ``policy/behavior_kl`` (and ``policy/behavior_is_mean``) when behavior logprobs are given;
        plus the method's own (``bapo/*``, ``entropic/*``, ``skywork/*``, ...).
        Returns :class:`LossOutput` (unpacks as ``loss, metrics``; ``clipped [B, T]`` bool: the
        tokens the policy loss clipped, or None when it has no clipping).
        """
        self._check_micro_batch(mb)
        own = self._req["mini_batch_stats"] and self._mini_stats is None
        if own:  # not inside begin/end_mini_batch: this call is the whole mini-batch
            self.begin_mini_batch(self.mini_batch_stats(mb))
        try:
            return self._loss(mb, num_tokens, num_seqs, micro_batch_fraction, num_episodes)
        finally:
            if own:
                self.end_mini_batch()

    def _loss(self, mb: MicroBatch, num_tokens: Tensor | float | None, num_seqs: Tensor | float | None,
              micro_batch_fraction: float | Tensor, num_episodes: Tensor | float | None = None) -> LossOutput:
        cfg = self.config
        mask = mb.loss_mask
        stats = self._mini_stats or {}
        agg = make_aggregate(cfg.aggregation.name, num_tokens=num_tokens, num_seqs=num_seqs, episode_tokens=mb.episode_tokens,
                             num_episodes=num_episodes, **cfg.aggregation.options)
        metrics: dict[str, Tensor] = {}
        adv = mb.advantages
        for entry, opts in self._shaping_with_source("current"):
            adv, m = entry.obj(advantages=adv, entropy=mb.entropy, loss_mask=mask, **opts)
            metrics.update(m)
        weights, kept = self._token_weights(mb, metrics)
        view = LossView(logprobs=mb.logprobs, proximal_logprobs=mb.proximal_logprobs, advantages=adv, loss_mask=mask,
                        aggregate=agg, entropy=mb.entropy, micro_batch_fraction=micro_batch_fraction,
                        all_reduce=self.all_reduce)
        ctrl: list[ControllerOutput] = [c.micro_batch(view) for c in self.controllers]
        options = dict(cfg.loss.options)
        for out in ctrl:
            options.update(out.loss_kwargs)
            metrics.update(out.metrics)
        pg_mask, pg_agg = mask, agg
        if self._kept_normalize():  # the policy loss over the kept tokens, mini-batch-wide counts
            pg_mask = kept
            pg_agg = make_aggregate(cfg.aggregation.name, num_tokens=stats["token_mask/kept_tokens"],
                                    num_seqs=stats["token_mask/kept_seqs"], **cfg.aggregation.options)
        tensors = {"logprobs": mb.logprobs, "proximal_logprobs": mb.proximal_logprobs, "advantages": adv,
                   "loss_mask": pg_mask, "entropy": mb.entropy, "ref_logprobs": mb.ref_logprobs}
        extra: dict[str, Any] = {"generator": self.generator(mb.logprobs.device)} if self._loss_takes_generator else {}
        if self._loss_stats() is not None:
            extra["mini_batch_stats"] = stats
        out = self.loss_entry.obj(**{k: tensors[k] for k in self.loss_entry.inputs}, **options,
                                  aggregate=pg_agg, token_weights=weights, **extra)
        policy, loss_metrics = out
        clipped = out.clipped if isinstance(out, LossOutput) else None  # a plugin may return (loss, metrics)
        metrics.update(loss_metrics)
        kl_term, ent_term = self._regularisers(mb, agg, metrics)
        ctrl_term = policy.new_zeros(())
        for out in ctrl:
            if out.extra_loss is not None:
                ctrl_term = ctrl_term + out.extra_loss
        total = policy + kl_term + ent_term + ctrl_term
        log_ratio = clamped_log_ratio(zero_masked(mb.logprobs.detach(), mask), zero_masked(mb.proximal_logprobs, mask))
        ratio = torch.exp(log_ratio)
        metrics.update({
            "loss/total": _stat(total), "loss/policy": _stat(policy), "loss/kl": _stat(kl_term),
            "loss/entropy_bonus": _stat(ent_term), "loss/controllers": _stat(ctrl_term),
            "policy/ratio_mean": _stat(masked_mean(ratio, mask)),
            "policy/approx_kl": _stat(masked_mean((ratio - 1) - log_ratio, mask)),
        })
        return LossOutput(total, metrics, clipped)

    def _check_micro_batch(self, mb: MicroBatch) -> None:
        req = self._req
        if req["entropy"] and mb.entropy is None:
            raise ValueError("this algorithm needs MicroBatch.entropy (current-policy entropy per token)")
        if req["entropy_grad"] and mb.entropy is not None and not mb.entropy.requires_grad and torch.is_grad_enabled():
            raise ValueError("the entropy bonus needs MicroBatch.entropy with gradient (compute it without no_grad)")
        if req["ref_logprobs"] and mb.ref_logprobs is None:
            raise ValueError("this algorithm needs MicroBatch.ref_logprobs (kl.coef > 0, prorl or archer KL)")

    def _token_weights(self, mb: MicroBatch, metrics: dict[str, Tensor]) -> tuple[Tensor | None, Tensor | None]:
        """``(weights, kept)``: detached per-token multipliers of the policy loss (the token mask,
        current scope or the batch-scope slice carried by the micro-batch, times the truncated
        behavior IS weight) and the token mask's kept tokens ``[B, T]`` bool (None without one)."""
        mask = mb.loss_mask
        weights = kept = None
        if self._token_mask_source() == "current":
            tm, m = self.token_mask.obj(entropy=mb.entropy, loss_mask=mask, **self.config.token_mask.options)
            metrics.update(m)
            kept = tm & mask
        elif mb.token_mask is not None:
            kept = mb.token_mask & mask
        if kept is not None:
            weights = kept.float()
        if weights is not None:
            metrics["policy/token_mask_frac"] = _stat(masked_mean(weights, mask))
        if mb.behavior_logprobs is not None:  # sampler vs proximal mismatch (k3 of KL(behavior || proximal))
            lr = clamped_log_ratio(zero_masked(mb.proximal_logprobs, mask), zero_masked(mb.behavior_logprobs, mask))
            metrics["policy/behavior_kl"] = _stat(masked_mean(torch.exp(lr) - 1 - lr, mask))
            cap = self.config.off_policy.behavior_is_cap
            if cap is not None:
                isw = zero_masked(torch.exp(lr).clamp(max=cap).detach(), mask)
                metrics["policy/behavior_is_mean"] = _stat(masked_mean(isw, mask))
                weights = isw if weights is None else weights * isw
        return weights, kept

    def _regularisers(self, mb: MicroBatch, agg: Callable[[Tensor, Tensor], Tensor],
                      metrics: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(kl_term, entropy_term)``: ``kl.coef * agg(KL)`` and ``-entropy_coef * agg(H)``; also
        the step accumulators the controllers read at ``end_train_step``."""
        cfg, mask = self.config, mb.loss_mask
        zero = mb.logprobs.new_zeros(())
        kl_term, ent_term = zero, zero
        n_tok = mask.sum()
        if mb.ref_logprobs is not None and self._track_kl:
            kl_tok = kl_estimate(cfg.kl.estimator, logprobs=zero_masked(mb.logprobs, mask),
                                 ref_logprobs=zero_masked(mb.ref_logprobs, mask), **cfg.kl.options)
            kl_sum = masked_sum(kl_tok.detach(), mask)
            metrics["policy/kl_ref"] = _stat(kl_sum / n_tok.clamp(min=1))
            self._accumulate("kl_ref", kl_sum, n_tok)
            if cfg.kl.coef > 0:
                kl_term = cfg.kl.coef * agg(kl_tok, mask)
        if mb.entropy is not None:
            ent_sum = masked_sum(mb.entropy.detach(), mask)
            metrics["policy/entropy"] = _stat(ent_sum / n_tok.clamp(min=1))
            self._accumulate("entropy", ent_sum, n_tok)
            if cfg.entropy_coef > 0:
                ent_term = -cfg.entropy_coef * agg(mb.entropy, mask)
        return kl_term, ent_term

    # ------------------------------------------------------------------ step end, state
    def end_train_step(self) -> StepResult:
        """Feed the step's measurements to the controllers; call once after each optimizer step."""
        acc = reduce_sums(self._acc, self.all_reduce)
        mean = {k: v[0] / v[1].clamp(min=1) for k, v in acc.items()}
        stats = StepStats(step=self._step, rollout_nll=self._rollout_nll, rollout_entropy=self._rollout_entropy,
                          entropy=mean.get("entropy"), kl_ref=mean.get("kl_ref"))
        metrics: dict[str, Tensor] = {}
        reset: bool | Tensor = False
        for c in self.controllers:
            out = c.end_train_step(stats)
            metrics.update(out.metrics)
            if isinstance(out.reset_reference, Tensor) or out.reset_reference:
                reset = out.reset_reference if reset is False else (reset | out.reset_reference)
        self._step += 1
        self._reset_accumulators()
        return StepResult(metrics, reset)

    def state_dict(self) -> dict[str, Any]:
        """Controllers' states, step counter and generator states (for checkpoints)."""
        gens = {k: g.get_state() for k, g in self._generators.items()}
        gens.update({k: v for k, v in self._generator_states.items() if k not in gens})
        return {"step": self._step, "controllers": {c.name: c.state_dict() for c in self.controllers}, "generators": gens}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._step = int(state.get("step", 0))
        names = {c.name: c for c in self.controllers}
        for name, cstate in state.get("controllers", {}).items():
            if name not in names:
                raise KeyError(f"checkpoint has state for controller {name!r}, not configured here ({sorted(names)})")
            names[name].load_state_dict(cstate)
        self._generators.clear()
        self._generator_states = dict(state.get("generators", {}))


def build_algorithm(config: AlgorithmConfig | dict[str, Any], *, all_reduce: AllReduce | None = None) -> Algorithm:
    """An :class:`Algorithm` from a config object or the raw ``algorithm:`` mapping."""
    cfg = config if isinstance(config, AlgorithmConfig) else AlgorithmConfig.from_dict(config)
    return Algorithm(cfg, all_reduce=all_reduce)
