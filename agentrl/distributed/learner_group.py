"""Learner ranks as Ray actors, behind the Learner's interface (``update``, ``state_dict``,
``load_state_dict``, ``close``).

One rank: a plain :class:`~agentrl.learner.learner.Learner` in an actor. N ranks: each holds an
FSDP2 shard of the policy (:mod:`agentrl.distributed.fsdp`), receives the whole batch, trains on
its share of every mini-batch, and the algorithm's statistics are summed over ranks through the
``all_reduce`` callable of ``build_algorithm``. Ranks are placed by a Ray placement group
(``PACK``: one node when it fits, so NCCL stays on NVLink).

The driver's model is the *mirror*: after every ``update`` it is loaded with rank 0's new
weights (so train.py checkpoints it and syncs it to the rollout as in local mode), and when the
driver changes it itself (SFT warm start) the change is pushed to the ranks before the next call.
A change is detected by the parameters' version counters (``Tensor._version``, bumped by every
in-place write such as ``optimizer.step`` or ``load_state_dict``), so nothing is sent when
nothing changed.

A rank that dies is not replaced in-process: its shard and optimizer state are gone. The run
fails with the Ray error and ``agentrl train`` resumes from the last checkpoint.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from agentrl.config import TrainConfig, import_modules

from .cluster import cpu_state_dict, free_port, init_ray, load_weights, node_ip, param_versions, wait_ready

log = logging.getLogger(__name__)


class LearnerRank:
    """One learner rank (a Ray actor). ``setup`` builds the model and the Learner."""

    def __init__(self, cfg: TrainConfig, model_config: Any, rank: int, world_size: int) -> None:
        torch.set_num_threads(cfg.run.num_threads)  # as in the driver: see RunConfig.num_threads
        import_modules(cfg.run.imports)
        self.cfg, self.model_config, self.rank, self.world_size = cfg, model_config, rank, world_size
        self.sharded = world_size > 1
        self.learner: Any = None
        self.policy: Any = None

    def rendezvous(self) -> tuple[str, int]:
        """Rank 0's address and a free port for torch.distributed."""
        return node_ip(), free_port()

    def setup(self, state: dict[str, torch.Tensor], address: str, port: int) -> dict[str, Any]:
        from agentrl.algorithms import build_algorithm
        from agentrl.learner.learner import Learner

        from .workers import build_policy_model

        cfg = self.cfg
        device = cfg.run.device
        all_reduce = None
        if self.sharded:
            from . import fsdp

            fsdp.init_process_group(self.rank, self.world_size, address, port, device)
            all_reduce = fsdp.all_reduce_sum
        torch.manual_seed(cfg.run.seed)
        algorithm = build_algorithm(cfg.algorithm, all_reduce=all_reduce)  # parsed once, in load_config

        # FSDP with model.dtype bfloat16: float32 master weights, bf16 compute (fsdp.mixed_precision)
        train_dtype = fsdp.master_dtype(cfg.model.dtype) if self.sharded else cfg.model.dtype

        def build(dtype: str) -> Any:
            m = build_policy_model(self.model_config, dtype=dtype, device=device)
            load_weights(m, state)
            if cfg.model.gradient_checkpointing:
                m.gradient_checkpointing_enable()
            return m.train()

        ref = None
        self.policy = build(train_dtype)
        if self.sharded:
            self.policy = fsdp.shard_policy(self.policy, mp_policy=fsdp.mixed_precision(cfg.model.dtype))
            if algorithm.requirements()["ref_logprobs"]:  # frozen: kept in model.dtype, no policy
                ref = fsdp.shard_policy(build(cfg.model.dtype)).eval().requires_grad_(False)
        self.learner = Learner(
            self.policy, algorithm, cfg.trainer, temperature=cfg.rollout.temperature, async_mode=cfg.run.mode == "async",
            seed=cfg.run.seed, ref_model=ref, dp_rank=self.rank, dp_size=self.world_size, dp_all_reduce=all_reduce,
        )
        return {"pid": os.getpid(), "rank": self.rank, "device": str(self.learner.device)}

    # ------------------------------------------------------------------ collective calls (every rank)
    def update(self, batch: Any) -> dict[str, Any]:
        """One train_step; rank 0 returns the metrics and an ObjectRef of the new weights."""
        import ray

        metrics = self.learner.update(batch)
        weights = self._full_weights()
        return {"metrics": metrics, "weights": ray.put(weights) if self.rank == 0 else None}

    def _full_weights(self) -> dict[str, torch.Tensor]:
        if self.sharded:
            from . import fsdp

            return fsdp.full_state_dict(self.policy)
        return cpu_state_dict(self.policy)

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the policy weights (the driver's mirror changed: SFT warm start)."""
        if self.sharded:
            from . import fsdp

            fsdp.load_full_state_dict(self.policy, state)
        else:
            load_weights(self.policy, state)

    def state_dict(self) -> dict[str, Any]:
        state = self.learner.state_dict()
        if self.sharded:
            from . import fsdp

            state["optimizer"] = fsdp.full_optimizer_state(self.policy, self.learner.optimizer)
            state["optimizer_format"] = "fsdp_full"  # keyed by parameter name, any number of ranks
            if self.learner.ref_model is not None:
                state["ref_model"] = fsdp.full_state_dict(self.learner.ref_model)
            if fsdp.mixed_precision(self.cfg.model.dtype) is not None:
                # the float32 masters: the checkpointed model is in model.dtype (bf16), and
                # resuming from it would round every weight to bf16 once per resume
                state["master_weights"] = fsdp.full_state_dict(self.policy)
        return state if self.rank == 0 else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        fsdp_optimizer = state.get("optimizer_format") == "fsdp_full"
        if fsdp_optimizer != self.sharded:
            raise ValueError(
                "this checkpoint's optimizer state was saved with "
                f"{'several' if fsdp_optimizer else 'one'} learner rank(s); resume with "
                f"{'ray.learner_ranks > 1' if fsdp_optimizer else 'one learner rank (or backend local)'}"
            )
        if not self.sharded:
            self.learner.load_state_dict(state)
            return
        from . import fsdp

        ref, masters = state.get("ref_model"), state.get("master_weights")
        rest = {**state, "optimizer": self.learner.optimizer.state_dict(), "ref_model": None}
        rest.pop("master_weights", None)
        self.learner.load_state_dict(rest)
        if masters is not None and fsdp.mixed_precision(self.cfg.model.dtype) is not None:
            fsdp.load_full_state_dict(self.policy, masters)
        fsdp.load_full_optimizer_state(self.policy, self.learner.optimizer, state["optimizer"])
        if ref is not None and self.learner.ref_model is not None:
            fsdp.load_full_state_dict(self.learner.ref_model, ref)


class LearnerGroup:
    """``ray.learner_ranks`` LearnerRank actors that train the driver's ``model`` (its mirror).

    Args:
        cfg: the experiment (``run.device``, ``ray.learner_ranks``, resources).
        model: the driver's policy; its weights start the ranks and receive every update.

    Every rank builds the algorithm from ``cfg.algorithm`` itself (with the cross-rank
    ``all_reduce`` when sharded).
    """

    def __init__(self, cfg: TrainConfig, model: Any) -> None:
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        init_ray(cfg)
        self.cfg, self.model = cfg, model
        r = cfg.ray
        n = r.learner_ranks
        bundle = {"CPU": r.cpus_per_learner_rank, **({"GPU": r.gpus_per_learner_rank} if r.gpus_per_learner_rank else {})}
        self._pg = placement_group([bundle] * n, strategy="PACK")
        wait_ready([self._pg.ready()], f"a placement group for {n} learner ranks ({bundle} each)", r.startup_timeout_s)
        cls = ray.remote(LearnerRank)
        self.ranks = [
            cls.options(
                num_cpus=r.cpus_per_learner_rank, num_gpus=r.gpus_per_learner_rank, max_restarts=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self._pg, placement_group_bundle_index=i),
            ).remote(cfg, model.config, i, n)
            for i in range(n)
        ]
        address, port = wait_ready([self.ranks[0].rendezvous.remote()], f"{n} learner ranks", r.startup_timeout_s)[0]
        state = ray.put(cpu_state_dict(model))
        infos = wait_ready([rank.setup.remote(state, address, port) for rank in self.ranks], f"{n} learner ranks", r.startup_timeout_s)
        log.info("learner ranks: %s", infos)
        self._synced = param_versions(model)

    def _push_if_changed(self) -> None:
        import ray

        if param_versions(self.model) == self._synced:
            return
        log.info("the driver's model changed (SFT warm start?); sending its weights to the learner ranks")
        state = ray.put(cpu_state_dict(self.model))
        ray.get([rank.load_weights.remote(state) for rank in self.ranks])
        self._synced = param_versions(self.model)

    def update(self, batch: Any) -> dict[str, float]:
        """One train_step on every rank; the mirror gets the new weights."""
        import ray

        self._push_if_changed()
        ref = ray.put(batch)
        outs = ray.get([rank.update.remote(ref) for rank in self.ranks])
        load_weights(self.model, ray.get(outs[0]["weights"]))
        self._synced = param_versions(self.model)
        return outs[0]["metrics"]

    def state_dict(self) -> dict[str, Any]:
        import ray

        self._push_if_changed()
        return ray.get([rank.state_dict.remote() for rank in self.ranks])[0]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        import ray

        self._push_if_changed()
        ref = ray.put(state)
        ray.get([rank.load_state_dict.remote(ref) for rank in self.ranks])

    def close(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for rank in self.ranks:
            try:
                ray.kill(rank)
            except Exception:
                pass
        try:
            remove_placement_group(self._pg)
        except Exception:
            pass
