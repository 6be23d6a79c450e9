"""The policy on the learner side: loading any HF causal LM, and per-token logprobs and entropy
of whole trajectories computed through the LM head in chunks (bounded memory)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from agentrl.algorithms.logits import logprobs_and_entropy_from_hidden

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def load_tokenizer(path: str, chat_template: str | None = None) -> Any:
    from transformers import AutoTokenizer

    from agentrl.models.chat import load_template

    tok = AutoTokenizer.from_pretrained(path)
    if chat_template:
        tok.chat_template = load_template(chat_template)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str, *, dtype: str = "float32", device: str = "cpu", gradient_checkpointing: bool = False) -> Any:
    """``AutoModelForCausalLM.from_pretrained(path)``; raises FileNotFoundError with a fix
    when a local-looking path does not exist (no hub access is attempted for it)."""
    from transformers import AutoModelForCausalLM

    looks_local = path.startswith((".", "/", "~")) or Path(path).parts[:1] == ("runs",) or Path(path).exists()
    if looks_local and not Path(path).expanduser().exists():
        raise FileNotFoundError(
            f"model path {path!r} does not exist; create a tiny model with `agentrl model init --out {path}` "
            f"or add a model.init section to the config"
        )
    model = AutoModelForCausalLM.from_pretrained(str(Path(path).expanduser()) if looks_local else path, dtype=DTYPES[dtype])
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model.to(device)


def sequence_logprobs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    compute_entropy: bool = True,
    positions: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token ``(logprobs, entropy)`` ``[B, T]`` float32 for right-padded sequences.

    ``logprobs[:, t]`` is log p(input_ids[:, t] | input_ids[:, <t]) at ``temperature``;
    ``entropy[:, t]`` is the full-vocabulary entropy of that same next-token distribution.
    Column 0 (no context) is 0. Values on padding are meaningless; mask them.
    ``attention_mask`` None: no padding mask, the causal mask alone (HF's fast path; position
    ids 0..T-1). For right-padded rows that gives the masked values on every real token (a real
    token only attends to earlier positions, all real), so the learner passes None for them.
    ``positions`` ``[B, T]`` bool (True: this token's values are wanted, e.g. the loss mask):
    the LM head, softmax and entropy run only there, and every other position is 0 (the
    decoder still runs on every token: later tokens attend to them). Values at the wanted
    positions are those of the full computation; gradients flow only through them. None: all.
    Memory: hidden states ``[B, T, D]`` plus chunks of ``[chunk_size, V]``, never ``[B*T, V]``.
    A :class:`PolicyForward` is called as a module (FSDP2 needs its hooks to run).
    """
    if isinstance(model, PolicyForward):
        return model(input_ids, attention_mask, temperature=temperature, chunk_size=chunk_size,
                     compute_entropy=compute_entropy, positions=positions)
    base = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
    mask = None if attention_mask is None else attention_mask.long()
    hidden = base(input_ids=input_ids, attention_mask=mask).last_hidden_state
    head = model.get_output_embeddings()
    targets = input_ids[:, 1:]
    if positions is not None:
        if positions.shape != input_ids.shape or positions.dtype != torch.bool:
            raise ValueError(f"positions must be a bool tensor of input_ids' shape {tuple(input_ids.shape)}, "
                             f"got {positions.dtype} {tuple(positions.shape)}")
        wanted = positions[:, 1:]
        lp, en = logprobs_and_entropy_from_hidden(
            hidden[:, :-1][wanted], head.weight, targets[wanted], bias=getattr(head, "bias", None),
            temperature=temperature, chunk_size=chunk_size, compute_entropy=compute_entropy,
        )
        logp = lp.new_zeros(targets.shape).masked_scatter(wanted, lp)
        ent = en.new_zeros(targets.shape).masked_scatter(wanted, en) if en is not None else None
    else:
        logp, ent = logprobs_and_entropy_from_hidden(
            hidden[:, :-1], head.weight, targets, bias=getattr(head, "bias", None),
            temperature=temperature, chunk_size=chunk_size, compute_entropy=compute_entropy,
        )
    zeros = logp.new_zeros((input_ids.shape[0], 1))
    logp = torch.cat([zeros, logp], dim=1)
    ent = torch.cat([zeros, ent], dim=1) if ent is not None else None
    return logp, ent


class PolicyForward(torch.nn.Module):
    """A causal LM whose ``forward`` is :func:`sequence_logprobs`.

    FSDP2 gathers a module's parameters in hooks around ``forward``; the chunked logprobs read
    the decoder and the LM head weight directly, so a sharded model is wrapped in this module
    and the wrapper is the FSDP root (``agentrl.distributed.fsdp``). Its state dict keys carry
    the prefix ``lm.``.
    """

    def __init__(self, lm: Any) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, *, temperature: float = 1.0,
                chunk_size: int | None = None, compute_entropy: bool = True,
                positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        return sequence_logprobs(self.lm, input_ids, attention_mask, temperature=temperature, chunk_size=chunk_size,
                                 compute_entropy=compute_entropy, positions=positions)
