"""Shared fixtures of the training tests."""

from __future__ import annotations

from pathlib import Path


def build_warm_model(tmp_path_factory, guess_env_id: str, sft_steps: int) -> Path:
    """A tiny model SFT'd ``sft_steps`` steps on GuessNumber(high=4) expert episodes, so rewards
    vary within groups and updates are not zero; returns the saved HF folder."""
    from agentrl.learner.policy import load_model, load_tokenizer
    from agentrl.learner.sft import sft
    from agentrl.models.chat import ChatFormat
    from agentrl.models.tiny import create_tiny_model, env_corpus
    from agentrl.rollout.expert import expert_trajectories

    out = tmp_path_factory.mktemp("warm")
    texts = env_corpus([guess_env_id], episodes=10, template="chatml", env_kwargs={guess_env_id: {"high": 4}}, tools_in_prompt=False)
    path = create_tiny_model(out / "init", texts, vocab_size=300, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1)
    tok, model = load_tokenizer(str(path)), load_model(str(path))
    data = expert_trajectories(guess_env_id, ChatFormat(tok), episodes=40, env_kwargs={"high": 4}, tools_in_prompt=False)
    sft(model, data, pad_token_id=tok.pad_token_id, steps=sft_steps, lr=3e-3, batch_size=8, progress=False)
    model.save_pretrained(out / "sft")
    tok.save_pretrained(out / "sft")
    return out / "sft"
