"""agentrl: reinforcement learning for tool-using LLM agents on long horizons."""

__version__ = "0.1.0"
