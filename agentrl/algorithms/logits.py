"""Per-token logprobs and full-vocabulary entropy from logits, in chunks with bounded memory.

Two entry points, both temperature-aware (``z = logits / temperature``, as the sampler saw it)
and both returning float32 ``logprobs`` and ``entropy`` of the shape of ``targets``:

* :func:`logprobs_and_entropy_from_logits` when the model already produced logits
  ``[..., V]``. Each chunk runs under ``torch.utils.checkpoint``, so neither the forward nor the
  backward ever holds more than one chunk of float32 intermediates (the input logits themselves
  and their gradient are the caller's).
* :func:`logprobs_and_entropy_from_hidden` from final hidden states ``[..., D]`` and the LM head
  weight ``[V, D]``: a custom ``autograd.Function`` computes each chunk's logits, keeps only
  ``[N]``-sized results, and recomputes the chunk's logits in backward. The full ``[N, V]``
  logits never exist, in forward or backward.

Alignment is the caller's: ``targets[t]`` is the token whose probability ``logits[t]`` gives
(for a causal LM, logits at position t-1 predict token t). ``targets`` outside ``[0, V)`` (e.g.
-100 on prompt/tool tokens) are clamped for the gather; mask those positions with ``loss_mask``.

Gradients (z = logits/temperature, p = softmax(z), H = -sum p log p):
``d logp_y / dz = onehot(y) - p`` and ``dH/dz = -p * (log p + H)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

__all__ = ["logprobs_and_entropy_from_logits", "logprobs_and_entropy_from_hidden", "auto_chunk_size"]

DEFAULT_CHUNK_BYTES = 32 * 2**20  # one float32 chunk of logits; backward holds about 3 of them


def auto_chunk_size(vocab_size: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Tokens per chunk so that one float32 ``[chunk, V]`` buffer is about ``chunk_bytes``."""
    return max(1, chunk_bytes // (4 * vocab_size))


def _chunk_stats(z: Tensor, targets: Tensor, compute_entropy: bool) -> tuple[Tensor, Tensor | None]:
    lse = torch.logsumexp(z, dim=-1)
    logp = z.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
    if not compute_entropy:
        return logp, None
    logp_all = z - lse.unsqueeze(-1)
    p = logp_all.exp()
    ent = -torch.linalg.vecdot(p, logp_all)
    return logp, ent


def _from_logits_chunk(logits: Tensor, targets: Tensor, temperature: float, compute_entropy: bool):
    z = logits.float() / temperature
    logp, ent = _chunk_stats(z, targets, compute_entropy)
    return (logp, ent) if compute_entropy else (logp,)


def _check_temperature(temperature: float) -> None:
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a positive finite number, got {temperature}")


def logprobs_and_entropy_from_logits(
    logits: Tensor,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    compute_entropy: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """``(logprobs, entropy)`` from ``logits [..., V]`` (any float dtype) and ``targets [...]`` long.

    Returns float32 tensors of ``targets``' shape; ``entropy`` is None when
    ``compute_entropy=False``. Entropy is in nats, in ``[0, log V]``. ``chunk_size`` tokens per
    chunk (default: :func:`auto_chunk_size`). Gradient flows to ``logits`` through both outputs.
    Raises ValueError on shape mismatch or a non-positive temperature.
    """
    _check_temperature(temperature)
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} must be targets {tuple(targets.shape)} + [V]")
    vocab = logits.shape[-1]
    flat = logits.reshape(-1, vocab)
    tgt = targets.reshape(-1).clamp(0, vocab - 1)
    step = chunk_size or auto_chunk_size(vocab)
    use_ckpt = torch.is_grad_enabled() and flat.requires_grad
    lps, ents = [], []
    for start in range(0, flat.shape[0], step):
        args = (flat[start:start + step], tgt[start:start + step], temperature, compute_entropy)
        out = checkpoint(_from_logits_chunk, *args, use_reentrant=False) if use_ckpt else _from_logits_chunk(*args)
        lps.append(out[0])
        if compute_entropy:
            ents.append(out[1])
    logp = torch.cat(lps).reshape(targets.shape) if lps else flat.new_zeros(targets.shape, dtype=torch.float32)
    if not compute_entropy:
        return logp, None
    ent = torch.cat(ents).reshape(targets.shape) if ents else torch.zeros_like(logp)
    return logp, ent


class _HiddenHead(torch.autograd.Function):
    """Chunked ``logits = hidden @ weight.T (+ bias)`` -> (logprobs, entropy) with recompute."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_size, compute_entropy):
        n = hidden.shape[0]
        logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
        ent = torch.empty(n, dtype=torch.float32, device=hidden.device) if compute_entropy else None
        lse_all = torch.empty(n, dtype=torch.float32, device=hidden.device)
        with torch.no_grad():
            for s in range(0, n, chunk_size):
                e = min(s + chunk_size, n)
                z = _HiddenHead._logits(hidden[s:e], weight, bias, temperature)
                lse = torch.logsumexp(z, dim=-1)
                lse_all[s:e] = lse
                logp[s:e] = z.gather(-1, targets[s:e].unsqueeze(-1)).squeeze(-1) - lse
                if compute_entropy:
                    z.sub_(lse.unsqueeze(-1))  # z is now log p
                    p = z.exp()
                    ent[s:e] = -torch.linalg.vecdot(p, z)
                    del p
                del z
        ctx.save_for_backward(hidden, weight, bias, targets, lse_all, ent)
        ctx.temperature = temperature
        ctx.chunk_size = chunk_size
        ctx.compute_entropy = compute_entropy
        return logp, ent

    @staticmethod
    def _logits(h: Tensor, weight: Tensor, bias: Tensor | None, temperature: float) -> Tensor:
        z = (h @ weight.t()).float()
        if bias is not None:
            z += bias.float()
        if temperature != 1.0:
            z /= temperature
        return z

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        hidden, weight, bias, targets, lse_all, ent = ctx.saved_tensors
        tau, step = ctx.temperature, ctx.chunk_size
        n = hidden.shape[0]
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
        if g_logp is None:
            g_logp = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        use_ent = ctx.compute_entropy and g_ent is not None
        for s in range(0, n, step):
            e = min(s + step, n)
            h = hidden[s:e]
            z = _HiddenHead._logits(h, weight, bias, tau)
            z.sub_(lse_all[s:e].unsqueeze(-1))  # log p
            p = z.exp()
            gl = g_logp[s:e].float().unsqueeze(-1)
            if use_ent:
                # grad_z = gl * (onehot - p) - g_H * p * (log p + H)
                z.add_(ent[s:e].unsqueeze(-1)).mul_(g_ent[s:e].float().unsqueeze(-1)).add_(gl).mul_(p).neg_()
                grad_z = z
            else:
                grad_z = p.mul_(gl).neg_()
            grad_z.scatter_add_(-1, targets[s:e].unsqueeze(-1), gl)
            if tau != 1.0:
                grad_z /= tau
            del p
            if need_h:
                grad_h[s:e] = (grad_z.to(weight.dtype) @ weight).to(hidden.dtype)
            if need_w:
                grad_w.addmm_(grad_z.t(), h.float())  # in place: no [V, D] temporary per chunk
            if need_b:
                grad_b += grad_z.sum(0)
            del grad_z, z
        grad_w = grad_w.to(weight.dtype) if need_w else None
        grad_b = grad_b.to(bias.dtype) if need_b else None
        return grad_h, grad_w, grad_b, None, None, None, None


def logprobs_and_entropy_from_hidden(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    bias: Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    compute_entropy: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """``(logprobs, entropy)`` through an LM head without materialising ``[N, V]`` logits.

    hidden ``[..., D]`` (model dtype), weight ``[V, D]`` (``lm_head.weight``), bias ``[V]`` or
    None, targets ``[...]`` long. Returns float32 ``[...]`` tensors (entropy None when
    ``compute_entropy=False``). The head matmul runs in the weight's dtype, the softmax in
    float32 (as HF models upcast logits). Peak extra memory is about three float32
    ``[chunk_size, V]`` buffers plus, in backward, a float32 gradient of ``weight``.
    Gradients flow to ``hidden``, ``weight`` and ``bias``.
    """
    _check_temperature(temperature)
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} must be targets {tuple(targets.shape)} + [D]")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must be [V, D={hidden.shape[-1]}], got {tuple(weight.shape)}")
    vocab = weight.shape[0]
    flat = hidden.reshape(-1, hidden.shape[-1])
    tgt = targets.reshape(-1).clamp(0, vocab - 1)
    step = chunk_size or auto_chunk_size(vocab)
    logp, ent = _HiddenHead.apply(flat, weight, bias, tgt, float(temperature), int(step), bool(compute_entropy))
    return logp.reshape(targets.shape), (ent.reshape(targets.shape) if compute_entropy else None)
