"""torch FSDP2 (``fully_shard``) for the learner ranks: process group, sharding, full state dicts.

Layout: every decoder layer is its own FSDP unit; the embeddings, final norm and LM head
belong to the root unit, a :class:`~agentrl.learner.policy.PolicyForward` wrapper whose
``forward`` is the chunked logprob/entropy computation (FSDP2 gathers parameters in hooks
around ``forward``, and the chunked LM head reads ``lm_head.weight`` directly). Gradients are
*summed* over ranks (divide factor 1): each rank's loss already uses the global token/sequence
denominators of the mini-batch (see ``agentrl.learner.learner``).

Mixed precision (``model.dtype: bfloat16``): the ranks keep float32 parameters (the sharded
master weights the optimizer updates) and FSDP2 computes in bfloat16 with gradients reduced in
float32 (:func:`mixed_precision`: ``MixedPrecisionPolicy(param_dtype=bfloat16,
reduce_dtype=float32)``); the all-gather is in bfloat16, so communication and activations cost
what pure bf16 costs, while small updates are not rounded away in bf16 weights. The frozen
reference model stays bf16 without a policy (no optimizer, the same values once cast). See
docs/distributed.md.

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


def mixed_precision(dtype: str) -> Any:
    """The FSDP2 policy for a run whose ``model.dtype`` is ``dtype``: bfloat16 compute with
    float32 gradient reduction for ``"bfloat16"`` (the parameters must then be float32), None
    (compute in the parameters' dtype) for ``"float32"``."""
    if dtype != "bfloat16":
        return None
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)


def master_dtype(dtype: str) -> str:
    """The dtype the sharded trainable parameters are built in for ``model.dtype`` ``dtype``:
    float32 master weights whenever :func:`mixed_precision` computes in a lower precision."""
    return "float32" if mixed_precision(dtype) is not None else dtype


def shard_policy(lm: Any, *, reshard_after_forward: bool = True, mp_policy: Any = None) -> PolicyForward:
    """Shard ``lm`` in place over the default process group; returns the FSDP root wrapper.
    ``mp_policy``: a ``MixedPrecisionPolicy`` for every unit (:func:`mixed_precision`), or None."""
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    kwargs = {"reshard_after_forward": reshard_after_forward, "mp_policy": mp_policy if mp_policy is not None else MixedPrecisionPolicy()}
    for layer in _decoder_layers(lm):
        fully_shard(layer, **kwargs)
    root = PolicyForward(lm)
    fully_shard(root, **kwargs)
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
