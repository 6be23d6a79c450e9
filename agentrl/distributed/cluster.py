"""Connecting to Ray, and small helpers shared by the actors."""

from __future__ import annotations

import logging
import socket
from typing import Any

from agentrl.config import TrainConfig

log = logging.getLogger(__name__)


def init_ray(cfg: TrainConfig) -> None:
    """Connect to ``run.ray_address``, or start a local cluster (``ray.num_cpus`` CPUs, no
    dashboard, warnings only). Does nothing when Ray is already initialised in this process
    (a test's shared cluster, or the rollout and learner of one run)."""
    import ray

    if ray.is_initialized():
        return
    common: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True, "configure_logging": True}
    if cfg.run.ray_address:
        log.info("connecting to the Ray cluster at %s", cfg.run.ray_address)
        ray.init(address=cfg.run.ray_address, **common)
    else:
        log.info("starting a local Ray cluster (num_cpus=%s)", cfg.ray.num_cpus)
        ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, **common)


def free_port() -> int:
    """A TCP port free on this node right now (for torch.distributed's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address()


def wait_ready(refs: list[Any], what: str, timeout_s: float) -> list[Any]:
    """``ray.get(refs)`` with a timeout that explains itself: actors that cannot start are
    usually waiting for resources the cluster does not have."""
    import ray

    try:
        return ray.get(refs, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise TimeoutError(
            f"{what} did not start within {timeout_s:.0f}s. The cluster has {ray.cluster_resources()} "
            f"({ray.available_resources()} free); lower the ray.cpus_per_* / ray.gpus_per_* settings or the worker "
            f"counts, or raise ray.startup_timeout_s"
        ) from None


def is_actor_death(e: BaseException) -> bool:
    """True for the errors Ray raises when an actor is dead or unreachable."""
    import ray

    return isinstance(e, ray.exceptions.RayActorError)


def cpu_state_dict(model: Any) -> dict[str, Any]:
    """The model's tensors on CPU, detached (what travels through the object store)."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def load_weights(model: Any, state: dict[str, Any]) -> None:
    """``model.load_state_dict(state)`` that accepts a state dict listing a tied parameter
    once (torch.distributed's full state dicts do); any other missing or extra key raises."""
    import torch

    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    covered = {n for group in names.values() if any(x in state for x in group) for n in group}
    with torch.no_grad():
        missing, unexpected = model.load_state_dict(state, strict=False)
    bad = [k for k in missing if k not in covered]
    if bad or unexpected:
        raise KeyError(f"weights do not match the model: missing {bad[:5]}, unexpected {list(unexpected)[:5]}")


def param_versions(model: Any) -> list[int]:
    """The parameters' version counters (bumped by every in-place write: ``optimizer.step``,
    ``load_state_dict``): equal lists mean the weights did not change in between."""
    return [p._version for p in model.parameters()]
