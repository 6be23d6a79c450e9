"""ShellQuest (``agentrl/ShellQuest-v0``): shell chores in a generated file tree.

Source: procedurally generated, offline. Each task is a file tree that is a pure function of
(vocab, difficulty, horizon, split, index), written into a bash sandbox session at reset. The
train and test splits use disjoint generation seeds; in small-vocabulary mode, where two seeds
can draw the same quest, a quest's content hash also decides its split, so no test quest is a
train quest.

Tools: ``shell(command)`` runs in one persistent bash session per episode (``cd``, variables
and files survive between turns; output is cut at ``max_tool_output_chars``);
``submit()`` ends the episode.

Goals: a chain of clues; following it needs reading tool output (the next command depends on
what the last one printed). Full vocabulary (default): K stages of find / read a setting /
count / print a line / count files / distinct column values / grep a request id / tail in
reverse / sum over a filter / arg-max, each answer written to ``answers/<stage>.txt``.
Small vocabulary (``vocab="small"``, the CPU quickstart): a clue chain through directories
named after 16 animals (``cat note`` -> ``go fox`` -> ``cd fox; cat note`` -> ... ->
``key hen`` -> ``echo hen > /work/answer``); about 50 distinct words in a whole episode.

Reward: answers are read back from the sandbox with ``Session.get_file``; printed text is never
trusted. ``reward="sparse"`` (default): 1.0 at ``submit`` when every answer file is right,
else 0. ``reward="partial"``: ``1/(n+1)`` when each of the n sub-goals (a stage's answer file;
in small mode, reaching the next directory of the chain) is first completed, the rest at a
correct ``submit``. Success = full reward (1.0) in both modes.

Horizon: ``horizon`` is the expert's number of turns: exactly, in small mode (from 4 up; e.g.
6 for the quickstart, 10 and 50 for long-horizon studies); ``2K + 1`` with
``K = (horizon - 1) // 2`` stages in full mode (5 to 100+). ``max_turns`` defaults to
``horizon + max(4, horizon // 2)``. ``horizon=[lo, hi]`` mixes lengths in one env: each task's
horizon is a seeded uniform draw from lo..hi, and the task is the fixed-horizon task of that
horizon and index (``benchmarks/async_speedup.py`` uses [5, 50]). ``difficulty`` (1-3) adds chore kinds, hidden clue
locations and a deeper tree (full) or decoy files and a final count (small).
"""

from .env import ShellQuestEnv

__all__ = ["ShellQuestEnv"]
