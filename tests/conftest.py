"""Shared fixtures: a tiny env from docs/add_env.md, tiny models per chat template."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "add_env.md"


def load_doc_env() -> types.ModuleType:
    """Exec the complete example env of docs/add_env.md (registers agentrl/GuessNumber-v0)."""
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL).group(1)
    module = types.ModuleType("guess_number_doc")
    exec(compile(code, str(DOC), "exec"), module.__dict__)
    return module


@pytest.fixture(scope="session")
def guess_env_id() -> str:
    load_doc_env()
    return "agentrl/GuessNumber-v0"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, guess_env_id):
    """Per template: a tiny Qwen2 (or Llama for llama3) saved in HF format, tokenizer trained
    on GuessNumber expert transcripts."""
    from agentrl.models.tiny import create_tiny_model, env_corpus

    cache: dict[str, Path] = {}

    def make(template: str = "chatml") -> Path:
        if template not in cache:
            texts = env_corpus([guess_env_id], episodes=12, template=template)
            arch = "llama" if template == "llama3" else "qwen2"
            cache[template] = create_tiny_model(
                tmp_path_factory.mktemp(f"tiny_{template}"), texts, template=template, arch=arch,
                vocab_size=600, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
            )
        return cache[template]

    return make
