"""Rollouts: the multi-turn agent loop and the generation engines."""

from .agent_loop import AgentLoop, EpisodeSpec, anchor_key
from .engines import Engine, Generation, HFEngine, SamplingParams

__all__ = ["AgentLoop", "Engine", "EpisodeSpec", "Generation", "HFEngine", "SamplingParams", "anchor_key"]
