"""Text tool environments on Gymnasium (imported as ``agentrl.envs``)."""
