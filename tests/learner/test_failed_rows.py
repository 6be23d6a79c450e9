"""Failed episodes contribute nothing to an update: not to the loss, not to group statistics.

Rows of failed trajectories stay in the batch (for shapes and metrics) with ``loss_mask`` all
False. Group baselines (GRPO, RLOO, GiGPO) are computed over the group's non-failed members
only; a group that failures leave with one member is dropped (advantage 0: no baseline).
Checked three ways: advantages against hand-worked values; the weights after an update do not
depend on what the failed rows hold (ids, rewards, logprobs); and with one mini-batch the
update equals the update on the batch with the failed rows (and the group they leave with a
single member) removed.
"""

from __future__ import annotations

import math

import pytest
import torch

from agentrl.config import TrainConfig, from_dict
from agentrl.types import Trajectory, collate


def trajectory(task: str, member: int, reward: float, *, seed: int, failed: bool = False, n_prompt: int = 5, turns: int = 2, vocab: int = 100) -> Trajectory:
    g = torch.Generator().manual_seed(seed)
    t = Trajectory(task_id=task, sample_index=member, env_id="test")
    t.append(torch.randint(3, vocab, (n_prompt,), generator=g).tolist(), generated=False)
    for k in range(turns):
        ids = torch.randint(3, vocab, (3,), generator=g).tolist()
        t.append(ids, generated=True, turn=k, logprobs=(-torch.rand(3, generator=g) * 3).tolist(), version=0)
        t.turn_rewards.append(reward if k == turns - 1 else 0.0)
        t.anchor_keys.append(f"{task}/{k}")
        t.append(torch.randint(3, vocab, (2,), generator=g).tolist(), generated=False)
    t.success = reward > 0.5
    if failed:
        t.anchor_keys.append("started-turn")  # a failure mid-turn: anchor recorded, reward not
        t.mark_failed("env_step", "RuntimeError: injected")
    return t


# groups of 3: g0 rewards [1, 0, (failed 1)]; g1 [(failed 0), 1, (failed 1)]: one survivor;
# g2 [0, 1, 1] no failure
LAYOUT = [("g0", 1.0, False), ("g0", 0.0, False), ("g0", 1.0, True),
          ("g1", 0.0, True), ("g1", 1.0, False), ("g1", 1.0, True),
          ("g2", 0.0, False), ("g2", 1.0, False), ("g2", 1.0, False)]


def batch(failed_seed: int = 0, drop_failed: bool = False, failed_reward_shift: float = 0.0):
    trajs = []
    for i, (task, r, failed) in enumerate(LAYOUT):
        if drop_failed and (failed or task == "g1"):  # g1's lone survivor has no baseline: dropped too
            continue
        seed = 1000 * failed_seed + i if failed else i
        trajs.append(trajectory(task, i % 3, r + (failed_reward_shift if failed else 0.0), seed=seed, failed=failed, turns=1 if failed else 2))
    return trajs


def advantages(estimator: str) -> torch.Tensor:
    from agentrl.algorithms import build_algorithm
    from agentrl.algorithms.algorithm import RolloutBatch

    b = collate(batch(), pad_token_id=0)
    algo = build_algorithm({"estimator": estimator})
    rb = RolloutBatch(rewards=b.rewards, group_ids=b.group_ids, loss_mask=b.loss_mask, turn_ids=b.turn_ids,
                      turn_rewards=b.turn_rewards, anchor_ids=b.anchor_ids, correct=b.success)
    adv = algo.compute_advantages(rb)
    # the advantage of a row is the same on all its trained tokens: report it per row (0 if none)
    per_row = torch.where(adv.loss_mask, adv.advantages, torch.zeros(())).sum(1) / adv.loss_mask.sum(1).clamp(min=1)
    return per_row


def test_grpo_baseline_over_the_groups_non_failed_members():
    # g0: valid rewards [1, 0]: mean 0.5, unbiased std sqrt(0.5) = 0.7071 -> +/-0.7071
    # g1: one survivor -> dropped (0); g2: [0, 1, 1]: mean 2/3, std sqrt(1/3) = 0.5774 -> -1.1547, 0.5774, 0.5774
    s = math.sqrt(0.5)
    expected = torch.tensor([0.5 / s, -0.5 / s, 0, 0, 0, 0, -(2 / 3) / math.sqrt(1 / 3), (1 / 3) / math.sqrt(1 / 3), (1 / 3) / math.sqrt(1 / 3)])
    torch.testing.assert_close(advantages("grpo"), expected.float(), atol=1e-5, rtol=0)


def test_rloo_baseline_over_the_groups_non_failed_members():
    # g0: [1, 0] -> 1 - 0 = 1, 0 - 1 = -1; g1 dropped; g2 [0, 1, 1]: 0 - 1 = -1, 1 - 0.5 = 0.5, 0.5
    expected = torch.tensor([1.0, -1.0, 0, 0, 0, 0, -1.0, 0.5, 0.5])
    torch.testing.assert_close(advantages("rloo"), expected, atol=1e-6, rtol=0)


def test_a_group_of_size_one_by_design_keeps_its_baseline_rule():
    """group_size 1 (no failure): verl's A = R / (1 + eps) for GRPO, A = R for RLOO; only a
    group reduced to one member by failures is dropped."""
    from agentrl.algorithms.estimators import grpo, rloo

    r, g, valid = torch.tensor([1.0, 0.0]), torch.tensor([0, 1]), torch.tensor([True, True])
    torch.testing.assert_close(grpo(rewards=r, group_ids=g, valid=valid).advantages, torch.tensor([1 / (1 + 1e-6), 0.0]))
    torch.testing.assert_close(rloo(rewards=r, group_ids=g, valid=valid).advantages, torch.tensor([1.0, 0.0]))


def test_gigpo_leaves_failed_episodes_out_of_episode_and_step_groups():
    # mean_norm, episode statistics over steps: each valid trajectory weighs its 2 turns.
    # g0: valid [1, 0] -> A_E = +/-0.5; step groups: turn k of g0 shares anchor "g0/k" between
    # the two valid rows; returns (gamma 1, reward on the last turn) [1, 1] and [0, 0] -> A_S
    # = +/-0.5 per turn; total +/-1.0. The failed row's turn 0 (anchor "g0/0") is not in the group.
    adv = advantages("gigpo")
    assert adv[0].item() == pytest.approx(1.0, abs=1e-5) and adv[1].item() == pytest.approx(-1.0, abs=1e-5)
    assert adv[2:6].abs().max().item() == 0.0  # failed rows, and g1's lone survivor


def make_learner(model, path, *, mini_batches=1, ppo_epochs=1, micro_batch_size=3, estimator="grpo", loss="ppo", aggregation="token-mean",
                 seed=0):
    from agentrl.algorithms import build_algorithm
    from agentrl.learner.learner import Learner

    cfg = from_dict(TrainConfig, {"model": {"path": path}, "trainer": {"micro_batch_size": micro_batch_size, "lr": 1e-2, "mini_batches": mini_batches,
                                                                        "ppo_epochs": ppo_epochs, "weight_decay": 0.1}})
    algo = build_algorithm({"estimator": estimator, "loss": {"name": loss}, "aggregation": aggregation})
    return Learner(model, algo, cfg.trainer, seed=seed)


def updated_weights(path, trajs, sgd: bool = False, **kw) -> dict[str, torch.Tensor]:
    """The weights after one update. ``sgd``: plain SGD with lr 1 instead of AdamW, so the
    change is minus the (clipped) gradient; Adam's first step g / (|g| + eps) would magnify the
    float noise of weights whose gradient is ~0 into differences of a whole step."""
    from agentrl.learner.policy import load_model

    model = load_model(path)
    learner = make_learner(model, path, **kw)
    if sgd:
        learner.optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    learner.update(collate(trajs, pad_token_id=0))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean"])
@pytest.mark.parametrize("estimator", ["grpo", "rloo"])
def test_the_update_does_not_depend_on_what_failed_rows_hold(tiny_model_dir, estimator, aggregation):
    path = str(tiny_model_dir("chatml"))
    kw = {"mini_batches": 3, "ppo_epochs": 2, "estimator": estimator, "aggregation": aggregation}
    a = updated_weights(path, batch(failed_seed=1), **kw)
    b = updated_weights(path, batch(failed_seed=2, failed_reward_shift=5.0), **kw)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean"])
def test_with_one_mini_batch_failed_rows_are_as_if_absent(tiny_model_dir, aggregation):
    path = str(tiny_model_dir("chatml"))
    with_failed = updated_weights(path, batch(), sgd=True, aggregation=aggregation, micro_batch_size=2)
    without = updated_weights(path, batch(drop_failed=True), sgd=True, aggregation=aggregation, micro_batch_size=2)
    from agentrl.learner.policy import load_model

    start = load_model(path).state_dict()
    moved = max((with_failed[k] - start[k]).abs().max().item() for k in start)
    assert moved > 1e-4  # the update did something
    for k in with_failed:
        # float noise only: micro-batches hold other rows, so sums run in another order
        torch.testing.assert_close(with_failed[k], without[k], atol=1e-6, rtol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


def test_a_batch_where_every_episode_failed_changes_nothing(tiny_model_dir):
    from agentrl.learner.policy import load_model

    path = str(tiny_model_dir("chatml"))
    trajs = batch()
    for t in trajs:
        t.mark_failed("engine", "RuntimeError: injected")
    model = load_model(path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    m = make_learner(model, path).update(collate(trajs, pad_token_id=0))
    assert m["policy/skipped_update"] == 1.0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_a_mini_batch_of_failed_rows_takes_no_optimizer_step(tiny_model_dir):
    """3 mini-batches in order (1 epoch, no shuffle needed: rows grouped so that one mini-batch
    holds only failed rows): 2 optimizer steps run, 1 is skipped."""
    from agentrl.learner.policy import load_model

    path = str(tiny_model_dir("chatml"))
    trajs = [trajectory("g0", 0, 1.0, seed=1, failed=True), trajectory("g0", 1, 0.0, seed=2, failed=True), trajectory("g0", 2, 1.0, seed=3, failed=True),
             trajectory("g1", 0, 1.0, seed=4), trajectory("g1", 1, 0.0, seed=5), trajectory("g1", 2, 1.0, seed=6),
             trajectory("g2", 0, 0.0, seed=7), trajectory("g2", 1, 1.0, seed=8), trajectory("g2", 2, 1.0, seed=9)]
    # seed 14: the learner's shuffle, randperm(9), is [0, 1, 2, 5, 8, 6, 4, 7, 3], so the first
    # mini-batch holds exactly the three failed rows
    assert torch.randperm(9, generator=torch.Generator().manual_seed(14)).tolist()[:3] == [0, 1, 2]
    learner = make_learner(load_model(path), path, mini_batches=3, seed=14)
    m = learner.update(collate(trajs, pad_token_id=0))
    assert m["policy/skipped_mini_batches"] == 1.0
    assert learner.optimizer_steps == 2
