"""Tiny models of standard HF architectures, created locally (no hub): ``agentrl model init``.

A byte-level BPE tokenizer is trained with the ``tokenizers`` library on text rendered through
the chosen chat template (expert transcripts of one or more envs, so the tool-call syntax gets
short codes), the template's special tokens are added, and a freshly initialised Qwen2 or
Llama model is sized to it. Both are saved with ``save_pretrained``, so training loads them
through the real ``AutoModelForCausalLM`` / ``AutoTokenizer`` code path like any hub model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .chat import TEMPLATE_TOKENS, ChatFormat, load_template

log = logging.getLogger(__name__)

ARCHS = ("qwen2", "llama")


def train_tokenizer(texts: Iterable[str], *, template: str = "chatml", vocab_size: int = 1024) -> Any:
    """A ``PreTrainedTokenizerFast`` with a byte-level BPE trained on ``texts`` and the
    template's special tokens; ``chat_template`` is set. ``vocab_size`` counts the 256 bytes,
    the merges and the special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokens = TEMPLATE_TOKENS[template]
    specials = [t for t in (tokens.pad, tokens.eos, tokens.bos, *tokens.extra) if t]
    if vocab_size < 256 + len(specials) + 1:
        raise ValueError(f"vocab_size must be at least {256 + len(specials) + 1} (bytes + special tokens), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=tokens.bos,
        eos_token=tokens.eos,
        pad_token=tokens.pad,
        additional_special_tokens=list(tokens.extra),
    )
    fast.chat_template = load_template(template)
    return fast


def init_model(
    vocab_size: int,
    *,
    arch: str = "qwen2",
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 8192,
    initializer_range: float = 0.02,
    seed: int = 0,
    tokenizer: Any = None,
) -> Any:
    """A randomly initialised causal LM of a standard architecture (float32).

    ``initializer_range`` is the std of the normal init of every linear and embedding weight
    (HF's ``initializer_range``; 0.02 is the HF default, tuned for wide models). Tiny models
    learn to copy a word from tool output into the next command (attention that selects one
    earlier token) only after a loss plateau whose length grows as the init shrinks (the
    query-key product starts near zero, a saddle); at hidden size 128 a std near
    ``1/sqrt(hidden_size)`` (about 0.1) shortens it from 450 to over 1000 SFT steps,
    depending on the seed, to about 150 (configs/quickstart.yaml, docs/results.md)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    if arch not in ARCHS:
        raise ValueError(f"Unknown architecture {arch!r}; supported: {', '.join(ARCHS)}.")
    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise ValueError(f"hidden_size ({hidden_size}) must divide by num_heads ({num_heads}) and num_heads by num_kv_heads ({num_kv_heads})")
    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        initializer_range=initializer_range,
    )
    if tokenizer is not None:
        common.update(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
        )
    config = Qwen2Config(**common) if arch == "qwen2" else LlamaConfig(**common)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def env_corpus(env_ids: list[str], *, episodes: int, template: str, env_kwargs: dict[str, Any] | None = None, seed: int = 0,
               tools_in_prompt: bool = True, step_timeout_s: float | None = None, reset_timeout_s: float | None = None,
               max_failed_frac: float = 0.5) -> list[str]:
    """Expert transcripts of each env rendered through ``template`` (with the tool schemas when
    ``tools_in_prompt``), one text per episode, cycling over the train split.

    An episode whose env raises, or whose reset/step takes longer than ``reset_timeout_s`` /
    ``step_timeout_s`` (None: the env's own ``reset_timeout_s`` / ``step_timeout_s``), is
    skipped and logged, as in the SFT warm start. Raises ExpertFailures (one line, the first
    failure's reason) when more than ``max_failed_frac`` of an env's episodes fail."""
    from transformers import PreTrainedTokenizerFast

    import agentrl.envs as envs
    from agentrl.rollout.expert import ExpertFailures
    from agentrl.rollout.faults import within
    from agentrl.sandboxes import run_sync

    # A throwaway byte tokenizer just to render templates (rendering needs no vocabulary).
    from tokenizers import Tokenizer, models

    render_tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()), **_special_kwargs(template))
    fmt = ChatFormat(render_tok, load_template(template))
    texts = []
    for eid in env_ids:
        env = envs.make(eid, **(env_kwargs or {}).get(eid, {}))
        core = env.unwrapped
        n = core.num_tasks("train")
        reset_s = reset_timeout_s if reset_timeout_s is not None else getattr(core, "reset_timeout_s", 300.0)
        step_s = step_timeout_s if step_timeout_s is not None else getattr(core, "step_timeout_s", 300.0)

        async def play(k: int) -> None:
            obs, _ = await within(core.areset(seed=seed + k, options={"task_index": (seed + k) % n, "split": "train"}),
                                  reset_s, "env_timeout", "env.reset")
            policy, done = core.expert(), False
            while not done:
                obs, _, terminated, truncated, _ = await within(core.astep(policy(obs)), step_s, "env_timeout", "env.step")
                done = terminated or truncated

        failures: list[str] = []
        for k in range(episodes):
            try:
                run_sync(play(k))
            except Exception as e:  # a buggy env or expert: skip the episode, as SFT does
                failures.append(f"{type(e).__name__}: {e}")
                log.warning("tokenizer corpus: expert episode %d of %s failed (%s); skipped", k, eid, failures[-1])
                continue
            texts.append(fmt.render(core.transcript, core.tool_schemas if tools_in_prompt else None))
        try:
            env.close()
        except Exception as e:
            log.warning("tokenizer corpus: closing %s failed: %s", eid, e)
        if len(failures) > max_failed_frac * episodes:
            raise ExpertFailures(f"{len(failures)} of {episodes} expert episodes of {eid} failed (more than "
                                 f"{max_failed_frac:.0%}); the first: {failures[0]}", stage="tokenizer corpus")
    return texts


def _special_kwargs(template: str) -> dict[str, Any]:
    t = TEMPLATE_TOKENS[template]
    return {"bos_token": t.bos, "eos_token": t.eos, "pad_token": t.pad, "additional_special_tokens": list(t.extra)}


def create_tiny_model(
    out_dir: str | Path,
    texts: list[str],
    *,
    template: str = "chatml",
    arch: str = "qwen2",
    vocab_size: int = 1024,
    seed: int = 0,
    **model_kwargs: Any,
) -> Path:
    """Train a tokenizer on ``texts``, initialise a model, save both to ``out_dir`` (HF format)."""
    if not texts:
        raise ValueError("create_tiny_model needs a non-empty corpus to train the tokenizer")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(texts, template=template, vocab_size=vocab_size)
    model = init_model(len(tokenizer), arch=arch, seed=seed, tokenizer=tokenizer, **model_kwargs)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    tokenizer.save_pretrained(out)
    model.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    meta = {"template": template, "arch": arch, "vocab_size": len(tokenizer), "parameters": n_params, "corpus_texts": len(texts), "seed": seed, **model_kwargs}
    (out / "agentrl_model.json").write_text(json.dumps(meta, indent=2))
    log.info("saved a %s model with %d parameters and a %d-token vocabulary to %s", arch, n_params, len(tokenizer), out)
    return out
