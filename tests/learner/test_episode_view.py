"""Phase 1 on turn samples (issue 16): a batch whose rows are turn samples gets, token for
token, the advantages, loss mask and token mask the same episodes get as one row each, for
every shipped method config (estimators, GiGPO step groups, EMPG's per-turn modulation, the
80/20 token mask, dynamic sampling); plus a GRPO broadcast worked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from agentrl.algorithms import RolloutBatch, build_algorithm
from agentrl.learner.episode_view import EpisodeView

from ..algorithms.synthetic import multi_turn_batch
from ..algorithms.test_invariance import CASES

ZERO_OK: set[str] = set()
PROMPT = 3  # tokens of each turn sample's prompt (not trained)


def split_into_turn_rows(d: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Each episode row of ``d`` as one row per turn: PROMPT untrained tokens, then that
    turn's policy tokens with their per-token values; per-episode and per-turn values copied."""
    B, T = d["loss_mask"].shape
    rows: list[tuple[int, torch.Tensor]] = []
    for i in range(B):
        for k in range(int(d["turn_ids"][i].max()) + 1):
            rows.append((i, (d["turn_ids"][i] == k).nonzero().squeeze(1)))
    width = PROMPT + max(len(p) for _, p in rows)
    R = len(rows)
    out = {"loss_mask": torch.zeros(R, width, dtype=torch.bool), "turn_ids": torch.full((R, width), -1, dtype=torch.long)}
    for key in ("proximal_logprobs", "behavior_logprobs", "entropy"):
        out[key] = torch.full((R, width), 7.0)  # values at non-policy positions must not matter
    for r, (i, pos) in enumerate(rows):
        n = len(pos)
        out["loss_mask"][r, PROMPT : PROMPT + n] = True
        out["turn_ids"][r, PROMPT : PROMPT + n] = d["turn_ids"][i, pos]
        for key in ("proximal_logprobs", "behavior_logprobs", "entropy"):
            out[key][r, PROMPT : PROMPT + n] = d[key][i, pos]
    episode = torch.tensor([i for i, _ in rows])
    for key in ("rewards", "group_ids", "correct", "terminated", "truncated", "turn_rewards", "anchor_ids"):
        out[key] = d[key][episode]
    return out, episode


KEYS = ("rewards", "group_ids", "loss_mask", "turn_ids", "turn_rewards", "anchor_ids", "correct", "terminated", "truncated",
        "proximal_logprobs", "behavior_logprobs", "entropy")


@pytest.mark.parametrize("name", sorted(CASES))
def test_turn_rows_get_the_advantages_of_their_episodes(name):
    d = multi_turn_batch(b=8, t=24, s=3, group_size=4, seed=3)
    full = RolloutBatch(**{k: d[k] for k in KEYS})
    rows_d, episode = split_into_turn_rows(d)
    rows = RolloutBatch(**{k: rows_d[k] for k in KEYS})
    algo_full = build_algorithm(CASES[name])
    algo_rows = build_algorithm(CASES[name])
    ref = algo_full.compute_advantages(full)
    view = EpisodeView.of(rows.loss_mask, episode)
    got = view.rows_result(algo_rows.compute_advantages(view.rollout_batch(rows)))
    # token for token: the rows' policy tokens, in row order, are the episodes' policy tokens in order
    want_adv = ref.advantages[d["loss_mask"]]
    assert want_adv.abs().sum() > 0 or name in ZERO_OK, "the case gives no advantage: the comparison would be empty"
    torch.testing.assert_close(got.advantages[rows.loss_mask], want_adv, rtol=0, atol=1e-6)
    assert torch.equal(got.loss_mask[rows.loss_mask], ref.loss_mask[d["loss_mask"]])
    assert not got.loss_mask[~rows.loss_mask].any() and not got.advantages[~rows.loss_mask].any()  # prompts: nothing
    if ref.token_mask is not None:
        assert torch.equal(got.token_mask[rows.loss_mask], ref.token_mask[d["loss_mask"]])
    assert torch.equal(got.keep, ref.keep[episode]) and torch.equal(got.rewards, ref.rewards[episode])
    for k in ref.metrics:
        torch.testing.assert_close(got.metrics[k], ref.metrics[k], rtol=1e-5, atol=1e-6)


def test_grpo_broadcasts_the_episode_advantage_to_every_turn_by_hand():
    """Two episodes of one task, 3 and 1 turns of 2 policy tokens each, returns 1 and 0: GRPO
    gives (r - mean) / std = +-1/sqrt(2) (std over the 2 episodes, unbiased: 1/sqrt(2)), the
    same on every token of every turn row of an episode, whatever its turn count."""
    R, W = 4, 5
    loss_mask = torch.zeros(R, W, dtype=torch.bool)
    loss_mask[:, 3:5] = True
    turn_ids = torch.where(loss_mask, torch.tensor([0, 1, 2, 0])[:, None], -1)
    episode = torch.tensor([0, 0, 0, 1])
    rb = RolloutBatch(rewards=torch.tensor([1.0, 1.0, 1.0, 0.0]), group_ids=torch.zeros(R, dtype=torch.long), loss_mask=loss_mask, turn_ids=turn_ids)
    view = EpisodeView.of(loss_mask, episode)
    assert view.index.tolist() == [[3, 4, 8, 9, 13, 14], [18, 19, 0, 0, 0, 0]] and view.first.tolist() == [0, 3]
    adv = view.rows_result(build_algorithm({"estimator": "grpo"}).compute_advantages(view.rollout_batch(rb)))
    a = 1 / math.sqrt(2)
    expected = torch.zeros(R, W)
    expected[:3, 3:5] = a
    expected[3, 3:5] = -a
    torch.testing.assert_close(adv.advantages, expected, rtol=0, atol=1e-4)


def test_rows_of_an_episode_must_be_consecutive():
    with pytest.raises(ValueError, match="consecutive"):
        EpisodeView.of(torch.ones(3, 2, dtype=torch.bool), torch.tensor([0, 1, 0]))
