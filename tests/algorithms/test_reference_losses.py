"""Reference values for the policy losses: docs/methods.md worked examples plus hand-derived cases.

Each case carries its derivation. Tolerances are tight (1e-6) unless a value is only quoted to
fewer digits in docs/methods.md.
"""

from __future__ import annotations

import math

import pytest
import torch

from agentrl.algorithms.aggregation import make_aggregate
from agentrl.algorithms.losses import archer_loss, cispo_loss, clip_cov_loss, kl_cov_loss, ppo_loss

from .helpers import close, mask, ones_mask, ratio_to_old, row

E = math.exp


# ---------------------------------------------------------------- PPO / DAPO clip-higher (docs/methods.md §1e)
def _dapo():
    logp = row(-0.5, -1.0, -1.5, -0.2, requires_grad=True)
    old = row(-0.8, -1.2, -1.0, -0.9)
    adv = row(1, 1, -1, -1)
    return logp, old, adv


def test_ppo_dapo_worked_example():
    # eps 0.2/0.28, c = 10. r = exp(logp - old) = [e^.3, e^.2, e^-.5, e^.7] = [1.349859, 1.221403, 0.606531, 2.013753]
    # t1 A=+1: max(-1.349859, -1.28) = -1.28 (clipped high, zero grad)
    # t2 A=+1: r < 1.28, pg2 == pg1 = -1.221403 (unclipped; symmetric 0.2 would clip to -1.2)
    # t3 A=-1: max(0.606531, 0.8) = 0.8 (clipped low, zero grad); dual clip min(10, 0.8) = 0.8
    # t4 A=-1: max(2.013753, 1.28) = 2.013753 (grad flows); dual clip min(10, .) unchanged
    # token-mean = (-1.28 - 1.221403 + 0.8 + 2.013753) / 4 = 0.078087
    logp, old, adv = _dapo()
    loss, m = ppo_loss(logprobs=logp, proximal_logprobs=old, advantages=adv, loss_mask=ones_mask(4),
                       eps_low=0.2, eps_high=0.28, clip_ratio_c=10.0)
    close(loss, (-1.28 - E(0.2) + 0.8 + E(0.7)) / 4)
    close(loss, 0.078087, atol=1e-6)
    loss.backward()
    # d/dlogp of -A r = -A r: t2 -> -1.221403/4, t4 -> +2.013753/4; clipped tokens 0
    close(logp.grad, [[0.0, -E(0.2) / 4, 0.0, E(0.7) / 4]])
    close(m["policy/clipfrac_high"], 0.25)
    close(m["policy/clipfrac_low"], 0.25)
    close(m["policy/dualclip_frac"], 0.0)


def test_ppo_symmetric_clip_clips_token_two():
    # Same data, eps 0.2/0.2: t2 becomes max(-1.221403, -1.2) = -1.2 (clipped), so
    # mean = (-1.28 ... no: t1 -> -1.2 as well) = (-1.2 - 1.2 + 0.8 + 2.013753)/4
    logp, old, adv = _dapo()
    loss, _ = ppo_loss(logprobs=logp, proximal_logprobs=old, advantages=adv, loss_mask=ones_mask(4),
                       eps_low=0.2, eps_high=0.2, clip_ratio_c=10.0)
    close(loss, (-1.2 - 1.2 + 0.8 + E(0.7)) / 4)


def test_ppo_dual_clip_caps_large_negative_ratio():
    # A = -1, r = e^2.5 = 12.182494 > c = 3: L_clip = max(12.18, 1.2) = 12.18, dual clip
    # min(12.18, 3) = 3, zero gradient. A = -1, r = 2 < 3: L = 2, gradient dL/dlogp = r = 2.
    logp = row(0.0, 0.0, requires_grad=True)
    old = row(-2.5, -math.log(2.0))
    loss, m = ppo_loss(logprobs=logp, proximal_logprobs=old, advantages=row(-1, -1), loss_mask=ones_mask(2),
                       clip_ratio_c=3.0, aggregate=make_aggregate("seq-mean-token-sum"))
    close(loss, 3.0 + 2.0)
    loss.backward()
    close(logp.grad, [[0.0, 2.0]])
    close(m["policy/dualclip_frac"], 0.5)


def test_ppo_dual_clip_disabled_and_positive_advantages_unaffected():
    # clip_ratio_c=None: A=-1, r=e^2.5 -> loss 12.182494 with gradient r. A=+1 never dual-clipped:
    # r = e^2.5, eps 0.2 -> -1.2 (upper clip) with or without c.
    logp = row(0.0, 0.0, requires_grad=True)
    old = row(-2.5, -2.5)
    agg = make_aggregate("seq-mean-token-sum")
    loss, _ = ppo_loss(logprobs=logp, proximal_logprobs=old, advantages=row(-1, 1), loss_mask=ones_mask(2),
                       clip_ratio_c=None, aggregate=agg)
    close(loss, E(2.5) - 1.2)
    loss.backward()
    close(logp.grad, [[E(2.5), 0.0]])
    with pytest.raises(ValueError, match="clip_ratio_c"):
        ppo_loss(logprobs=logp, proximal_logprobs=old, advantages=row(-1, 1), loss_mask=ones_mask(2), clip_ratio_c=1.0)


def test_ppo_masked_padding_token_ignored():
    # Third token is padding with absurd values: the mean is over the two valid tokens only.
    # r = 1 everywhere valid: L = -A = [-2, 0.5] -> mean -0.75.
    logp = row(-1.0, -2.0, 50.0, requires_grad=True)
    old = row(-1.0, -2.0, -50.0)
    loss, _ = ppo_loss(logprobs=logp, proximal_logprobs=old, advantages=row(2.0, -0.5, 1e9),
                       loss_mask=mask(1, 1, 0))
    close(loss, -0.75)
    loss.backward()
    close(logp.grad, [[-1.0, 0.25, 0.0]])


# ---------------------------------------------------------------- CISPO (docs/methods.md §4e)
def _cispo_data():
    logp = row(-0.4, -2.0, -1.0, -0.3, requires_grad=True)
    old = ratio_to_old(logp, [1.5, 0.5, 1.1, 2.0])
    return logp, old, row(1, 1, -1, -1)


def test_cispo_verl_worked_example():
    # verl: w = clip(r, 1-10, 1+0.2) = [1.2, 0.5, 1.1, 1.2] (detached)
    # per-token -w*A*logp = [0.48, 1.0, -1.1, -0.36]; mean 0.02/4 = 0.005
    # dL/dlogp = -w*A/4 = [-0.3, -0.125, 0.275, 0.3]: every token keeps gradient
    logp, old, adv = _cispo_data()
    loss, m = cispo_loss(logprobs=logp, proximal_logprobs=old, advantages=adv, loss_mask=ones_mask(4))
    close(loss, 0.005)
    loss.backward()
    close(logp.grad, [[-0.3, -0.125, 0.275, 0.3]])
    close(m["policy/clipfrac_high"], 0.5)  # t1 (1.5) and t4 (2.0) capped


def test_cispo_trl_semantics_absolute_cap():
    # TRL: w = min(r, 5) = [1.5, 0.5, 1.1, 2.0]; grad = -w*A/4 = [-0.375, -0.125, 0.275, 0.5]
    logp, old, adv = _cispo_data()
    loss, _ = cispo_loss(logprobs=logp, proximal_logprobs=old, advantages=adv, loss_mask=ones_mask(4),
                         eps_high=5.0, semantics="trl")
    loss.backward()
    close(logp.grad, [[-0.375, -0.125, 0.275, 0.5]])
    with pytest.raises(ValueError, match="absolute cap"):
        cispo_loss(logprobs=logp, proximal_logprobs=old, advantages=adv, loss_mask=ones_mask(4),
                   eps_high=0.2, semantics="trl")


def test_cispo_on_policy_is_reinforce():
    # r = 1: w = 1, grad = -A/N with masked token excluded: A = [2, -1, (pad)], N = 2 -> [-1, 0.5, 0]
    logp = row(-0.3, -1.7, -9.0, requires_grad=True)
    loss, _ = cispo_loss(logprobs=logp, proximal_logprobs=logp.detach(), advantages=row(2, -1, 5),
                         loss_mask=mask(1, 1, 0))
    loss.backward()
    close(logp.grad, [[-1.0, 0.5, 0.0]])


# ---------------------------------------------------------------- Clip-Cov / KL-Cov (docs/methods.md §2e)
def _cov_data():
    logp = row(-0.1, -2.5, -3.0, -0.2, requires_grad=True)
    old = row(-0.1, -2.5, -2.8, -0.2)
    return logp, old, row(1.5, 1.5, -1.5, -1.5)


def test_clip_cov_worked_example_all_candidates():
    # r = [1, 1, e^-0.2 = 0.818731, 1]; mean A = 0, mean logp = -1.45
    # Cov = A*(logp + 1.45) = [2.025, -1.575, 2.325, -1.875]; eps 1 -> no PPO clip
    # candidates (1 < Cov < 5): t1, t3; ratio 0.5 -> n_clip = 2 -> both zeroed
    # losses [-1.5, -1.5, 1.228096, 1.5] -> [0, -1.5, 0, 1.5] -> mean 0; grad only t2, t4: -A r / 4
    logp, old, adv = _cov_data()
    g = torch.Generator().manual_seed(0)
    loss, m = clip_cov_loss(logprobs=logp, proximal_logprobs=old, advantages=adv, loss_mask=ones_mask(4),
                            generator=g, clip_cov_ratio=0.5)
    close(loss, 0.0)
    loss.backward()
    close(logp.grad, [[0.0, -0.375, 0.0, 0.375]])
    close(m["clip_cov/selected_frac"], 0.5)


def test_clip_cov_default_ratio_picks_one_candidate_at_random():
    # ratio 2e-4: n_clip = max(1, floor(8e-4)) = 1 -> exactly one of {t1, t3} loses its gradient;
    # over seeds both get picked. Same seed -> same choice.
    logp, old, adv = _cov_data()
    picked = set()
    for seed in range(12):
        lp = logp.detach().clone().requires_grad_(True)
        loss, _ = clip_cov_loss(logprobs=lp, proximal_logprobs=old, advantages=adv, loss_mask=ones_mask(4),
                                generator=torch.Generator().manual_seed(seed))
        loss.backward()
        zero = [i for i in range(4) if lp.grad[0, i] == 0]
        assert len(zero) == 1 and zero[0] in (0, 2)
        picked.add(zero[0])
    assert picked == {0, 2}
    a = clip_cov_loss(logprobs=logp, proximal_logprobs=old, advantages=adv, loss_mask=ones_mask(4),
                      generator=torch.Generator().manual_seed(3))[0]
    b = clip_cov_loss(logprobs=logp, proximal_logprobs=old, advantages=adv, loss_mask=ones_mask(4),
                      generator=torch.Generator().manual_seed(3))[0]
    close(a, b)


def test_clip_cov_skips_tokens_clipped_by_ppo():
    # eps 0.1: t3 has r = 0.818731 < 0.9 with A < 0 -> already PPO-clipped (loss 1.5*0.9 = 1.35),
    # so it is no candidate; the only candidate left is t1 (Cov 2.025), zeroed with ratio 0.5.
    # losses: [0, -1.5, 1.35, 1.5] -> mean 0.3375
    logp, old, adv = _cov_data()
    loss, m = clip_cov_loss(logprobs=logp, proximal_logprobs=old, advantages=adv, loss_mask=ones_mask(4),
                            generator=torch.Generator().manual_seed(0), clip_cov_ratio=0.5, eps_low=0.1, eps_high=0.1)
    close(loss, (0 - 1.5 + 1.35 + 1.5) / 4)
    close(m["clip_cov/candidate_frac"], 0.25)


def test_kl_cov_worked_example():
    # ratio 0.25 -> k = 1: top Cov is t3 (2.325): loss 1.5*0.818731 + 1*|−0.2| = 1.428096
    # others -1.5, -1.5, 1.5 -> mean -0.017976
    # grad t3: d/dlogp(-A r + |logp-old|) = -A r + sign(-0.2) = 1.228096 - 1 = 0.228096, /4
    logp, old, adv = _cov_data()
    loss, m = kl_cov_loss(logprobs=logp, proximal_logprobs=old, advantages=adv, loss_mask=ones_mask(4),
                          kl_cov_ratio=0.25)
    close(loss, (-1.5 - 1.5 + 1.5 * E(-0.2) + 0.2 + 1.5) / 4)
    close(loss, -0.017976, atol=1e-6)
    loss.backward()
    close(logp.grad, [[-0.375, -0.375, (1.5 * E(-0.2) - 1.0) / 4, 0.375]])
    close(m["kl_cov/selected_frac"], 0.25)


def test_kl_cov_no_clipping_and_inert_at_zero_log_ratio():
    # t1: A=1, logp 0, old -1 (r = e); t2: A=0, logp -3 = old; t3: A=2, logp 1 = old.
    # mean A = 1, mean logp = -2/3: Cov = [0, (-1)(-7/3), (1)(5/3)] = [0, 2.333, 1.667]
    # k = max(1, floor(1e-9 * 3)) = 1 -> t2 selected, but its log ratio is 0: |.| adds 0 and
    # (sign(0) = 0) no gradient. t1 is NOT clipped (KL-Cov has no PPO clip): loss -e, grad -e.
    # loss = (-e + 0 - 2) / 3; grad = [-e/3, 0, -2/3]
    logp = row(0.0, -3.0, 1.0, requires_grad=True)
    loss, m = kl_cov_loss(logprobs=logp, proximal_logprobs=row(-1.0, -3.0, 1.0), advantages=row(1.0, 0.0, 2.0),
                          loss_mask=ones_mask(3), kl_cov_ratio=1e-9)
    close(loss, (-E(1.0) - 2.0) / 3)
    loss.backward()
    close(logp.grad, [[-E(1.0) / 3, 0.0, -2.0 / 3]])
    close(m["kl_cov/selected_frac"], 1 / 3)


def test_kl_cov_single_token_always_selected():
    # k = max(1, .) = 1 with one valid token: loss -A r + |log r| = -e + 1, grad -e + 1
    logp = row(0.0, requires_grad=True)
    loss, _ = kl_cov_loss(logprobs=logp, proximal_logprobs=row(-1.0), advantages=row(1.0), loss_mask=ones_mask(1))
    close(loss, 1 - E(1.0))
    loss.backward()
    close(logp.grad, [[1 - E(1.0)]])


# ---------------------------------------------------------------- Archer (docs/methods.md §6e)
def test_archer_worked_example_quantile_and_clip_ranges():
    # entropies [0.1, 0.3, 0.2, 2.0, 0.05] + pad: sorted [0.05,0.1,0.2,0.3,2.0], pos 0.8*4 = 3.2
    # q = 0.3 + 0.2*(2.0-0.3) = 0.64 -> only H = 2.0 (t4) is high-entropy.
    # Every token has r = 1.4, A = +1: low tokens -> -1.2 (clipped), high token -> -1.4 (clip 0.5).
    # token-mean over 5 valid = (4*-1.2 - 1.4)/5 = -1.24; gradient only on t4: -1.4/5
    ent = row(0.1, 0.3, 0.2, 2.0, 0.05, 9.0)
    logp = row(-1, -1, -1, -1, -1, -1, requires_grad=True)
    old = ratio_to_old(logp, [1.4] * 6)
    m = mask(1, 1, 1, 1, 1, 0)
    loss, metrics = archer_loss(logprobs=logp, proximal_logprobs=old, advantages=row(1, 1, 1, 1, 1, 1),
                                loss_mask=m, entropy=ent, kl_coef_low=0.0)
    close(loss, (4 * -1.2 - 1.4) / 5)
    loss.backward()
    close(logp.grad, [[0, 0, 0, -1.4 / 5, 0, 0]])
    close(metrics["archer/high_entropy_frac"], 0.2)


def test_archer_kl_groups_separately_normalised():
    # logp -1.0, ref -1.2 on every token: k3 = e^-0.2 + 0.2 - 1 = 0.018731 each.
    # KL_low = mean over the 4 low tokens = 0.018731, KL_high = 0.018731 (1 token)
    # loss = pg + 0.001*KL_low + 0*KL_high; with r = 1, A = 0: pg = 0 -> loss = 1.8731e-5
    ent = row(0.1, 0.3, 0.2, 2.0, 0.05)
    logp = row(-1, -1, -1, -1, -1, requires_grad=True)
    loss, metrics = archer_loss(logprobs=logp, proximal_logprobs=logp.detach(), advantages=row(0, 0, 0, 0, 0),
                                loss_mask=ones_mask(5), entropy=ent, ref_logprobs=row(-1.2, -1.2, -1.2, -1.2, -1.2))
    k3 = E(-0.2) + 0.2 - 1
    close(metrics["archer/kl_low"], k3)
    close(loss, 0.001 * k3)
    loss.backward()
    # d k3/d logp = 1 - exp(ref - logp) = 1 - e^-0.2, spread over the 4 low tokens only
    close(logp.grad, [[0.001 * (1 - E(-0.2)) / 4] * 3 + [0.0, 0.001 * (1 - E(-0.2)) / 4]])
    with pytest.raises(ValueError, match="ref_logprobs"):
        archer_loss(logprobs=logp, proximal_logprobs=logp.detach(), advantages=row(0, 0, 0, 0, 0),
                    loss_mask=ones_mask(5), entropy=ent)


def test_archer_single_valid_token_is_low_entropy():
    # One valid token: quantile = its own entropy, H <= q -> low group -> clip 0.2: r 1.4, A 1 -> -1.2
    logp = row(-1.0, -1.0, requires_grad=True)
    loss, m = archer_loss(logprobs=logp, proximal_logprobs=ratio_to_old(logp, [1.4, 1.4]), advantages=row(1, 1),
                          loss_mask=mask(1, 0), entropy=row(5.0, 0.0), kl_coef_low=0.0)
    close(loss, -1.2)
    close(m["archer/high_entropy_frac"], 0.0)


# ---------------------------------------------------------------- 80/20 forking tokens (docs/methods.md §3e)
def test_forking_tokens_worked_example_through_the_loss():
    # H = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.9, 1.8, 2.5]: quantile(0.8) at position 7.2
    # = 0.9 + 0.2*(1.8-0.9) = 1.08 -> tokens 1.8 and 2.5 selected (2 of 10).
    # With r = 1 and A = [1..10]: per-token PPO loss -A; loss = (-9 - 10) / 10 (denominator: ALL 10)
    from agentrl.algorithms import MicroBatch, build_algorithm
    from agentrl.algorithms.token_masks import forking_tokens_mask

    ent = row(0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.9, 1.8, 2.5)
    sel, m = forking_tokens_mask(entropy=ent, loss_mask=ones_mask(10))
    close(m["forking/threshold"], 1.08)
    assert sel.tolist() == [[False] * 8 + [True, True]]
    algo = build_algorithm({"loss": {"name": "ppo", "eps_high": 0.28, "clip_ratio_c": 10.0},
                            "token_mask": {"name": "forking_tokens", "top_quantile": 0.2}})
    logp = row(*([-1.0] * 10), requires_grad=True)
    adv = row(*[float(i) for i in range(1, 11)])
    loss, metrics = algo.loss(MicroBatch(logprobs=logp, proximal_logprobs=logp.detach(), advantages=adv,
                                         loss_mask=ones_mask(10), entropy=ent))
    close(loss, (-9.0 - 10.0) / 10)
    loss.backward()
    close(logp.grad, [[0.0] * 8 + [-0.9, -1.0]])
    close(metrics["policy/token_mask_frac"], 0.2)


# ---------------------------------------------------------------- ProRL KL term (docs/methods.md §11e)
def test_prorl_kl_contribution_and_reset():
    # k3(logp -1, ref -1.2) = 0.018731; beta 1e-4 -> 1.873e-6 per token (token-mean of equal values).
    # Right after a reset (ref == logp) the contribution is 0.
    from agentrl.algorithms import MicroBatch, build_algorithm

    algo = build_algorithm({"kl": {"estimator": "k3", "coef": 1e-4}, "controllers": [{"name": "prorl"}]})
    lp = row(-1.0, -1.0, -1.0)
    out = algo.loss(MicroBatch(logprobs=lp, proximal_logprobs=lp, advantages=row(0, 0, 0), loss_mask=ones_mask(3),
                               ref_logprobs=row(-1.2, -1.2, -1.2)))
    close(out[1]["loss/kl"], 1e-4 * (E(-0.2) + 0.2 - 1), atol=1e-12, rtol=1e-5)
    after = algo.loss(MicroBatch(logprobs=lp, proximal_logprobs=lp, advantages=row(0, 0, 0), loss_mask=ones_mask(3),
                                 ref_logprobs=lp))
    close(after[1]["loss/kl"], 0.0)
