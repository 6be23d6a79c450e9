"""Models, tokenizers and chat templates: any HF causal LM, plus tiny local models for CPU."""

from .chat import TEMPLATE_NAMES, ChatFormat, load_template

__all__ = ["TEMPLATE_NAMES", "ChatFormat", "load_template"]
