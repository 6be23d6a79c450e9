"""The learner: policy forward (chunked logprobs/entropy), updates, checkpoints, SFT."""
