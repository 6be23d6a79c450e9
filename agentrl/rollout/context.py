"""Context policies: what each turn's prompt holds when an episode is longer than the context.

With ``rollout.context.policy: full`` (the default) an episode is one growing token sequence,
trained as one sample. Any other policy builds each turn's prompt anew from the episode so far,
and each turn becomes its own training sample: the prompt (not trained) and the ids sampled
for that turn (trained), token-in/token-out within the turn (docs/long_horizons.md).

A policy sees the episode as its *head* (the reset observation: system prompt and task) and
its finished *turns*, each ``[assistant message, env messages...]``, and returns the messages
of the next prompt:

- ``window``: the head, then the last ``window`` turns; with ``marker`` the last head message
  says how many earlier turns were left out.
- ``summary``: the same, plus a memory string: the env's ``state_summary()`` (ShellQuest: the
  clues its commands found; ScienceWorld: the room and the inventory; an env offers one by
  defining the method).

A user policy subclasses :class:`ContextPolicy`, overrides :meth:`ContextPolicy.memory` (or
:meth:`ContextPolicy.render`) and registers itself; ``run.imports`` loads its file::

    from agentrl.rollout.context import CONTEXT_POLICIES, ContextPolicy

    @CONTEXT_POLICIES.register("last_reward", summary="window plus the last reward", paper="")
    class LastReward(ContextPolicy):
        def memory(self, env, turns):
            return f"turns so far: {len(turns)}"

When a prompt is longer than the token cap (``rollout.max_total_tokens`` less the turn's
``max_new_tokens``), the agent loop shows fewer turns (down to none) until it fits; the turns
dropped that way are counted (``context_dropped_turns``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agentrl.algorithms.registry import Registry

__all__ = ["CONTEXT_POLICIES", "ContextPolicy", "WindowContext", "SummaryContext", "check_cap", "make_context_policy", "policy_of", "turn_prompt"]

CONTEXT_POLICIES = Registry("context policy", "context policies")
"""Name -> context policy class (``rollout.context.policy``). ``full`` is registered as the
base class: it is the agent loop's one-sequence path, not a prompt builder."""

Message = dict[str, Any]


class ContextPolicy:
    """Builds a turn's prompt messages from the episode's head and finished turns.

    Args:
        window: turns shown (the most recent ones), >= 1.
        marker: tell the model how many earlier turns were left out (appended to the last head
            message, so chat templates that require alternating roles still render it).
    """

    name = "full"

    def __init__(self, *, window: int = 4, marker: bool = True) -> None:
        if int(window) < 1:
            raise ValueError(f"rollout.context.window must be >= 1 (the turns each prompt shows), got {window}")
        self.window, self.marker = int(window), bool(marker)

    @property
    def full(self) -> bool:
        """True for the one-sequence path (no prompt building)."""
        return type(self) is ContextPolicy

    def check_env(self, env: Any) -> None:
        """Raise ValueError if ``env`` (unwrapped) cannot serve this policy."""

    def memory(self, env: Any, turns: Sequence[Sequence[Message]]) -> str:
        """A memory string for the next prompt ("" for none). ``env`` is the unwrapped env
        after its last step."""
        return ""

    def keep(self, turns: Sequence[Sequence[Message]]) -> int:
        """How many of the most recent turns the next prompt shows (before the token cap)."""
        return min(self.window, len(turns))

    def render(self, head: Sequence[Message], turns: Sequence[Sequence[Message]], env: Any, keep: int) -> list[Message]:
        """The prompt messages: the head (its last message extended by the memory and the
        left-out marker), then the last ``keep`` turns."""
        msgs = [dict(m) for m in head]
        notes = []
        memory = self.memory(env, turns)
        if memory:
            notes.append(f"[memory] {memory}")
        left_out = len(turns) - keep
        if left_out and self.marker:
            notes.append(f"[{left_out} earlier turn(s) not shown]")
        if notes:
            msgs[-1] = {**msgs[-1], "content": "\n\n".join([str(msgs[-1].get("content") or ""), *notes])}
        for turn in turns[len(turns) - keep:] if keep else []:
            msgs.extend(turn)
        return msgs


CONTEXT_POLICIES.register("full", summary="one growing sequence per episode, trained as one sample (the default)", paper="")(ContextPolicy)


@CONTEXT_POLICIES.register("window", summary="the system prompt, the task and the last `window` turns; one training sample per turn",
                           paper="verl-agent's memory manager (arXiv 2505.10978); Verlog's turn-level samples")
class WindowContext(ContextPolicy):
    name = "window"


@CONTEXT_POLICIES.register("summary", summary="window plus the env's state_summary() as a memory string; one training sample per turn",
                           paper="")
class SummaryContext(ContextPolicy):
    name = "summary"

    def __init__(self, *, window: int = 2, marker: bool = True) -> None:
        super().__init__(window=window, marker=marker)

    def check_env(self, env: Any) -> None:
        if not callable(getattr(env, "state_summary", None)):
            raise ValueError(f"rollout.context.policy=summary: env {type(env).__name__} has no state_summary() method; use policy "
                             f"'window', add state_summary() to the env, or register a policy whose memory() builds one (docs/long_horizons.md)")

    def memory(self, env: Any, turns: Sequence[Sequence[Message]]) -> str:
        return str(env.state_summary())


def make_context_policy(policy: str, *, window: int | None = None, marker: bool = True, options: dict[str, Any] | None = None) -> ContextPolicy:
    """The policy ``policy`` (a registered name) with its options (``window`` None: the
    policy's default, 4 for window, 2 for summary); raises UnknownNameError (known names
    listed) or ValueError (a bad option or value)."""
    entry = CONTEXT_POLICIES.get(policy)
    opts = {**(options or {}), "marker": marker, **({} if window is None else {"window": window})}
    entry.check_options(opts)
    return entry.obj(**opts)


def turn_prompt(chat: Any, policy: ContextPolicy, head: Sequence[Message], turns: Sequence[Sequence[Message]], env: Any,
                tools: list[dict[str, Any]] | None, cap: int) -> tuple[list[int], int, int]:
    """The prompt ids of the next turn (``chat.prompt_ids`` of the policy's messages) and the
    turns it shows and the turns dropped to fit: from the policy's own choice, one turn fewer
    at a time until prompt + one generated token fits in ``cap`` tokens, down to none (the
    caller ends the episode if even that is too long). The agent loop and the expert's SFT
    data both build their prompts here, so SFT trains on the prompts RL samples from."""
    keep = policy.keep(turns)
    dropped = 0
    while True:
        ids = chat.prompt_ids(policy.render(head, turns, env, keep), tools)
        if len(ids) + 1 <= cap or keep == 0:
            return ids, keep, dropped
        keep -= 1
        dropped += 1


def policy_of(context: Any) -> ContextPolicy:
    """The policy of a ``rollout.context`` section (:class:`agentrl.config.ContextConfig`)."""
    return make_context_policy(context.policy, window=context.window, marker=context.marker, options=context.options)


def check_cap(chat: Any, policy: ContextPolicy, env: Any, *, cap: int, max_new_tokens: int, tools_in_prompt: bool, split: str = "train") -> int:
    """Before any work: raise :class:`~agentrl.config.ConfigError` (a ValueError; the CLIs print
    it as one ``error:`` line) if the first prompt of the split's first task (the system prompt,
    the task and the policy's memory) plus one turn of ``max_new_tokens`` does not fit in ``cap``
    tokens; returns that prompt's length. ``env`` is a made env (reset here)."""
    from agentrl.config import ConfigError

    obs, info = env.reset(options={"task_index": 0, "split": split})
    tools = info.get("tools") if tools_in_prompt else None
    n = len(chat.prompt_ids(policy.render(list(obs), [], env.unwrapped, 0), tools))
    if n + max_new_tokens > cap:
        raise ConfigError(f"rollout.context.policy={policy.name!r}: the first prompt (system prompt, task{', tool schemas' if tools else ''} and memory) "
                         f"is {n} tokens, so with one turn of rollout.max_new_tokens={max_new_tokens} it needs {n + max_new_tokens} tokens, "
                         f"more than rollout.max_total_tokens={cap} (the per-turn context cap); raise rollout.max_total_tokens or lower max_new_tokens")
    return n
