"""Evaluation: ``agentrl eval`` (a policy on held-out tasks) and ``agentrl compare`` (a study
of methods x seeds x env variants, with a report of tables and plots). See docs/evaluation.md."""

from .stats import fit_entropy_law, mean_ci, pass_at_k

__all__ = ["fit_entropy_law", "mean_ci", "pass_at_k"]
