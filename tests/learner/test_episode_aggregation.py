"""``episode-mean-token-mean``: with turn samples (many rows per episode) every episode weighs
the same, whatever its number of turns; values worked by hand, and the update does not depend
on how the mini-batch is cut into micro-batches."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from agentrl.algorithms import build_algorithm
from agentrl.algorithms.aggregation import make_aggregate
from agentrl.config import TrainConfig, from_dict
from agentrl.learner.learner import Learner
from agentrl.learner.policy import load_model, load_tokenizer, sequence_logprobs
from agentrl.types import Trajectory, collate

from .test_fast_path import WEIGHT_ATOL, make_batch, trainer

# Episode A: turn rows [1, 1] and [1]; episode B: one row [0, 0, 0, 0] (padded positions hold 7).
PER = torch.tensor([[1.0, 1.0, 7.0, 7.0], [1.0, 7.0, 7.0, 7.0], [0.0, 0.0, 0.0, 0.0]])
MASK = torch.tensor([[True, True, False, False], [True, False, False, False], [True, True, True, True]])
EPISODE_TOKENS = torch.tensor([3.0, 3.0, 4.0])


def test_worked_example_weighs_episodes_not_rows_or_tokens():
    agg = make_aggregate("episode-mean-token-mean", episode_tokens=EPISODE_TOKENS, num_episodes=2)
    assert float(agg(PER, MASK)) == pytest.approx((3 / 3 + 0 / 4) / 2)  # 0.5
    assert float(make_aggregate("seq-mean-token-mean")(PER, MASK)) == pytest.approx((1 + 1 + 0) / 3)
    assert float(make_aggregate("token-mean")(PER, MASK)) == pytest.approx(3 / 7)
    # without episode counts every row is its own episode: seq-mean-token-mean
    assert float(make_aggregate("episode-mean-token-mean")(PER, MASK)) == pytest.approx(2 / 3)


def test_micro_batch_calls_sum_to_the_whole_with_mini_batch_counts():
    whole = make_aggregate("episode-mean-token-mean", episode_tokens=EPISODE_TOKENS, num_episodes=2)(PER, MASK)
    for split in ([[0], [1], [2]], [[0, 2], [1]], [[1, 2], [0]]):
        parts = [make_aggregate("episode-mean-token-mean", episode_tokens=EPISODE_TOKENS[i], num_episodes=2)(PER[i], MASK[i])
                 for i in map(torch.tensor, split)]
        assert float(sum(parts)) == pytest.approx(float(whole)), split


def test_episode_tokens_of_the_wrong_shape_are_refused():
    agg = make_aggregate("episode-mean-token-mean", episode_tokens=torch.ones(2), num_episodes=2)
    with pytest.raises(ValueError, match=r"episode_tokens must be \[B\] = \[3\].*got shape \[2\]"):
        agg(PER, MASK)


def test_kept_normalisation_cannot_be_combined():
    with pytest.raises(ValueError, match="cannot be combined with algorithm.token_mask 'forking_tokens' normalize: kept"):
        build_algorithm({"aggregation": "episode-mean-token-mean",
                         "token_mask": {"name": "forking_tokens", "entropy_source": "proximal", "normalize": "kept"}})


# ---------------------------------------------------------------- through the learner
# (turns, correct) per episode; groups of two: task 0 = e0, e1; task 1 = e2, e3
EPISODES = [(3, True), (1, False), (1, True), (2, False)]


def turn_sample_batch(model, pad_token_id: int, *, seed: int = 0):
    """Four episodes played under a turn-level context policy: each turn one sample (a prompt,
    then the sampled ids), ``segments`` their lengths; the behavior logprobs are the model's own
    (so one update is exactly on-policy: every ratio is 1)."""
    rng = random.Random(seed)
    vocab = model.config.vocab_size
    trajs = []
    for e, (turns, correct) in enumerate(EPISODES):
        t = Trajectory(task_id=f"task/{e // 2}", sample_index=e % 2, success=correct, terminated=True)
        for k in range(turns):
            prompt = [rng.randrange(3, vocab) for _ in range(rng.randint(4, 9))]
            gen = [rng.randrange(3, vocab) for _ in range(rng.randint(2, 7))]
            t.append(prompt, generated=False)
            t.append(gen, generated=True, turn=k, logprobs=[0.0] * len(gen), version=0)
            t.segments.append(len(prompt) + len(gen))
        t.turn_rewards = [0.0] * (turns - 1) + [float(correct)]
        trajs.append(t)
    batch = collate(trajs, pad_token_id=pad_token_id)
    assert batch.turn_samples and batch.batch_size == sum(n for n, _ in EPISODES)
    with torch.no_grad():
        logp, _ = sequence_logprobs(model, batch.input_ids, batch.attention_mask, compute_entropy=False)
    batch.behavior_logprobs = torch.where(batch.loss_mask, logp, torch.zeros(()))
    return batch


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    path = str(tiny_model_dir("chatml"))
    tok, model = load_tokenizer(path), load_model(path)
    model.eval()  # no dropout: the learner's forward equals the no-grad one that made the behavior logprobs
    return path, model, tok.pad_token_id


def update(path, base, algorithm_config, batch, trainer_cfg):
    model = copy.deepcopy(base)
    cfg = from_dict(TrainConfig, {"model": {"path": path}, "trainer": trainer_cfg, "algorithm": algorithm_config})
    metrics = Learner(model, build_algorithm(algorithm_config), cfg.trainer, seed=0).update(batch)
    return model, metrics, [p.grad.clone() for p in model.parameters()]


# On-policy PPO: each trained token's loss is -A, A the episode's advantage broadcast to its turns.
# Rows: e0 x3, e1 x1, e2 x1, e3 x2 (7 rows).
#   GRPO without std: A = +0.5, -0.5, +0.5, -0.5. Episode weights: -(0.5 - 0.5 + 0.5 - 0.5)/4 = 0
#     (the group-centred objective, as when each episode is one row); row weights:
#     -(3*0.5 - 0.5 + 0.5 - 2*0.5)/7 = -0.5/7 (episodes with more turns weigh more).
#   W-REINFORCE (lambda 0.1): A = 0.1, -1, 0.1, -1. Episodes: -(0.2 - 2)/4 = 0.45;
#     rows: -(3*0.1 - 1 + 0.1 - 2)/7 = 2.6/7.
HAND = {
    ("grpo_no_std", "episode-mean-token-mean"): 0.0,
    ("grpo_no_std", "seq-mean-token-mean"): -0.5 / 7,
    ("w_reinforce", "episode-mean-token-mean"): 0.45,
    ("w_reinforce", "seq-mean-token-mean"): 2.6 / 7,
}
ESTIMATOR = {"grpo_no_std": {"name": "grpo", "normalize_std": False}, "w_reinforce": "w_reinforce"}


@pytest.mark.parametrize("estimator,aggregation", sorted(HAND))
def test_the_learner_weighs_each_episode_once_by_hand(tiny, estimator, aggregation):
    path, base, pad = tiny
    batch = turn_sample_batch(base, pad)
    _, metrics, _ = update(path, base, {"estimator": ESTIMATOR[estimator], "aggregation": aggregation}, batch,
                           trainer(1, 1, 2))
    assert metrics["policy/ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    assert metrics["loss/policy"] == pytest.approx(HAND[estimator, aggregation], abs=1e-5)


@pytest.mark.parametrize("mini_batches", [1, 2])
def test_the_update_does_not_depend_on_micro_batching(tiny, mini_batches):
    """Micro-batches of 1, 3 and 7 rows, with and without length grouping: the rows of one
    episode land on different micro-batches, and the episode counts are the mini-batch's.
    Gradients agree to float noise (relative ~1e-6). Weights after Adam's first, sign-like step
    (``lr * g / (|g| + eps)``) move by a visible share of lr where an entry of g is ~1e-8 (see
    WEIGHT_ATOL): one row per micro-batch sums in another order, and such an entry moved by 2.02e-5
    here (seq-mean-token-mean on the same batch: 1.7e-5), so weights are compared to 5% of a step."""
    path, base, pad = tiny
    batch = turn_sample_batch(base, pad, seed=1)
    algo = {"estimator": "w_reinforce", "aggregation": "episode-mean-token-mean", "loss": {"name": "ppo", "eps_high": 0.28}}
    runs = [update(path, base, algo, batch, trainer(mini_batches, 1, mbs, group_by_length=group))
            for mbs, group in ((7, False), (1, False), (3, False), (3, True))]
    m0, x0, g0 = runs[0]
    for m1, x1, g1 in runs[1:]:
        assert x1["loss/total"] == pytest.approx(x0["loss/total"], rel=1e-5, abs=1e-6)
        for (name, p), q, a, b in zip(m1.named_parameters(), m0.parameters(), g1, g0):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()), msg=f"grad {name}")
            torch.testing.assert_close(p, q, rtol=0, atol=2.5 * WEIGHT_ATOL, msg=f"weight {name}")
    assert any(not torch.equal(p, q) for p, q in zip(base.parameters(), m0.parameters()))  # it did train


def test_one_row_per_episode_gives_the_seq_mean_token_mean_update(tiny):
    path, base, pad = tiny
    batch = make_batch(base, pad)  # full mode: one row per episode
    out = {agg: update(path, base, {"aggregation": agg}, batch, trainer(2, 1, 3))
           for agg in ("episode-mean-token-mean", "seq-mean-token-mean")}
    (m0, x0, g0), (m1, x1, g1) = out.values()
    assert x0["loss/total"] == pytest.approx(x1["loss/total"], rel=1e-6, abs=1e-7)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
