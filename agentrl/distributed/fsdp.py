"""torch FSDP2 (``fully_shard``) for the learner ranks: process group, sharding, full state dicts.

Layout: every decoder layer is its own FSDP unit; the embeddings, final norm and LM head
belong to the root unit, a :class:`~agentrl.learner.policy.PolicyForward` wrapper whose
``forward`` is the chunked logprob/entropy computation (FSDP2 gathers parameters in hooks
around ``forward``, and the chunked LM head reads ``lm_head.weight`` directly). Gradients are
*summed* over ranks (divide factor 1): each rank's loss already uses the global token/sequence
denominators of the mini-batch (see ``agentrl.learner.learner``).

Backends: NCCL on GPUs; gloo on CPU (FSDP2 works there with torch 2.13, which is what the CPU
test ``tests/distributed/test_fsdp.py`` checks against the single-process update).
"""

from __future__ import annotations

import datetime
from typing import Any

import torch
import torch.distributed as dist

from agentrl.learner.policy import PolicyForward

PREFIX = "lm."


def init_process_group(rank: int, world_size: int, address: str, port: int, device: str) -> None:
    """Join the learner ranks' process group (rendezvous at rank 0's ``address:port``)."""
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if device.startswith("cuda"):
        torch.cuda.set_device(0)  # Ray shows each rank only its own GPU(s)
    dist.init_process_group(backend, init_method=f"tcp://{address}:{port}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(minutes=30))


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over all ranks (a new tensor; ``t`` is left as it was)."""
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def _decoder_layers(lm: Any) -> list[torch.nn.Module]:
    decoder = lm.get_decoder() if hasattr(lm, "get_decoder") else lm.base_model
    layers = getattr(decoder, "layers", None) or getattr(decoder, "h", None)
    if layers is None:
        raise ValueError(f"cannot find the decoder layers of {type(lm).__name__} to shard (looked for .layers and .h)")
    return list(layers)


def shard_policy(lm: Any, *, reshard_after_forward: bool = True) -> PolicyForward:
    """Shard ``lm`` in place over the default process group; returns the FSDP root wrapper."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    for layer in _decoder_layers(lm):
        fully_shard(layer, reshard_after_forward=reshard_after_forward)
    root = PolicyForward(lm)
    fully_shard(root, reshard_after_forward=reshard_after_forward)
    for m in root.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)  # plain SUM (gloo has no PREMUL_SUM)
    return root


def full_state_dict(root: PolicyForward) -> dict[str, torch.Tensor]:
    """The unsharded weights on CPU with the LM's own key names (collective: every rank must
    call; rank 0 gets the tensors, other ranks an empty dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(root, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k.removeprefix(PREFIX): v for k, v in sd.items()}


def load_full_state_dict(root: PolicyForward, state: dict[str, torch.Tensor]) -> None:
    """Load an unsharded LM state dict (every rank passes the same full dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    names = {k for k, _ in root.named_parameters()} | {k for k, _ in root.named_buffers()}
    full = {PREFIX + k: v for k, v in state.items() if PREFIX + k in names}
    set_model_state_dict(root, full, options=StateDictOptions(full_state_dict=True, strict=False))


def full_optimizer_state(root: PolicyForward, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state unsharded and keyed by parameter name (collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(root, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(root: PolicyForward, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(root, optimizer, optim_state_dict=state, options=StateDictOptions(full_state_dict=True))
