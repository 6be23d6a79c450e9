"""Chat templates and token-in/token-out tokenization of multi-turn episodes.

The rollout never re-renders history. It keeps the ids the engine sampled and tokenizes only
what the env adds: the tool results plus the next generation prompt (:meth:`ChatFormat.delta_ids`).
The delta is found by rendering a fixed base conversation that ends with an assistant turn,
with and without the new messages, and taking the text after the base's end-of-turn token —
so it is exactly what the template would put there, for any template whose rendering of the
new messages does not depend on earlier content.

Templates shipped (``agentrl/models/templates/*.jinja``):

- ``chatml``: Qwen2.5-style ChatML with Hermes ``<tool_call>``; append-only.
- ``llama3``: Llama-3.1-style headers and ``<|eot_id|>``, tool results in ``ipython``; append-only.
- ``qwen3``: like Qwen3, it drops ``<think>`` reasoning from assistant turns before the last user
  query, so it is NOT append-only: re-rendering an episode after a mid-episode user message
  rewrites earlier turns. agentrl handles it by never re-rendering: the context at each turn is
  the accumulated sampled ids (earlier reasoning stays in context, as during sampling), so the
  ids trained on are the ids sampled. ``rerender_matches`` tells whether a full re-render would
  agree; the conformance test shows where it does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

TEMPLATE_NAMES = ("chatml", "llama3", "qwen3")


@dataclass(frozen=True)
class TemplateTokens:
    """Special tokens a template needs (added to tokenizers trained by ``agentrl model init``)."""

    bos: str | None
    eos: str  # end of an assistant turn: generation stops here
    pad: str
    extra: tuple[str, ...]


TEMPLATE_TOKENS = {
    "chatml": TemplateTokens(None, "<|im_end|>", "<|endoftext|>", ("<|im_start|>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")),
    "qwen3": TemplateTokens(None, "<|im_end|>", "<|endoftext|>", ("<|im_start|>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>")),
    "llama3": TemplateTokens("<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>", ("<|start_header_id|>", "<|end_header_id|>", "<tool_call>", "</tool_call>")),
}


def load_template(name: str) -> str:
    """The Jinja source of a shipped template. Raises ValueError listing the known names."""
    if name not in TEMPLATE_NAMES:
        raise ValueError(f"Unknown chat template {name!r}; shipped templates: {', '.join(TEMPLATE_NAMES)}.")
    return resources.files("agentrl.models").joinpath("templates", f"{name}.jinja").read_text()


_BASE = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "U"},
    {"role": "assistant", "content": "A"},
]


class ChatFormat:
    """Renders prompts and env replies to ids for one tokenizer + chat template.

    Args:
        tokenizer: a HF tokenizer with ``chat_template`` set (or pass ``template``).
        template: Jinja source overriding the tokenizer's template.
    Raises:
        ValueError: the template has no end-of-turn token the engine can stop on, or it is
            not suffix-stable (``delta_ids`` cannot be computed).
    """

    def __init__(self, tokenizer: Any, template: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.template = template or tokenizer.chat_template
        if not self.template:
            raise ValueError("the tokenizer has no chat_template; pass template=load_template('chatml') or set tokenizer.chat_template")
        self.eos_token: str = self._find_eot()
        self.eos_token_id: int = tokenizer.convert_tokens_to_ids(self.eos_token)
        self.stop_token_ids: tuple[int, ...] = tuple(
            sorted({self.eos_token_id, *([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])})
        )
        self._base_text = self.render(_BASE)
        cut = self._base_text.rfind(self.eos_token)
        self._prefix = self._base_text[: cut + len(self.eos_token)]

    def _find_eot(self) -> str:
        text = self.render(_BASE)
        after = text[text.rfind("A") + 1 :]
        for tok in ("<|im_end|>", "<|eot_id|>", "<|end|>", "</s>", self.tokenizer.eos_token):
            if tok and after.startswith(tok):
                return tok
        raise ValueError(
            f"cannot find the end-of-turn token after an assistant message in this template (text after it: {after[:40]!r}); "
            "the rollout needs one to stop generation"
        )

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None, add_generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tools=tools or None, chat_template=self.template, add_generation_prompt=add_generation_prompt, tokenize=False
        )

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def prompt_ids(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> list[int]:
        """Ids of the initial conversation plus the assistant generation prompt."""
        return self.encode(self.render(messages, tools, add_generation_prompt=True))

    def delta_ids(self, new_messages: list[dict[str, Any]]) -> list[int]:
        """Ids that follow an assistant turn's end-of-turn token: ``new_messages`` (tool
        results, user feedback) rendered by the template, then the next generation prompt.

        Raises ValueError if the template renders the base conversation differently once
        messages are appended (then token-in/token-out cannot be done by suffix).
        """
        full = self.render(_BASE + list(new_messages), add_generation_prompt=True)
        if not full.startswith(self._prefix):
            raise ValueError("chat template is not suffix-stable: appending messages changed the rendering of earlier turns")
        return self.encode(full[len(self._prefix) :])

    def rerender_matches(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, ids: list[int]) -> bool:
        """Whether rendering ``messages`` (ending with an assistant turn) from scratch gives
        exactly ``ids``, up to and including the last end-of-turn token (append-only check)."""
        text = self.render(messages, tools)
        text = text[: text.rfind(self.eos_token) + len(self.eos_token)]
        return self.encode(text) == list(ids)
