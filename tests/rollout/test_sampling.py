"""The HF engine's sampler (``_sample_tokens``): one batched softmax + cumsum, one uniform per
row from the row's own seeded generator. It draws from the filtered, tempered distribution,
never takes a token of probability 0, and a row's token depends on its own generator and
logits only (not on the other rows of the batch)."""

from __future__ import annotations

import math

import torch

from agentrl.rollout.engines import SamplingParams, _sample_tokens

PLAIN = SamplingParams()


def _gens(n: int, base: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(base + i) for i in range(n)]


def test_frequencies_follow_the_softmax():
    probs = torch.tensor([0.5, 0.25, 0.125, 0.125, 0.0])
    logits = torch.log(probs).expand(20_000, 5).clone()  # -inf for the last token
    tokens = _sample_tokens(logits, [PLAIN] * 20_000, _gens(20_000))
    freq = torch.bincount(tokens, minlength=5).float() / 20_000
    # 4 binomial standard errors at n = 20000 (at most 0.0035 for p = 0.5)
    for f, p in zip(freq.tolist(), probs.tolist()):
        assert abs(f - p) <= 4 * math.sqrt(p * (1 - p) / 20_000) + 1e-9, (freq, probs)
    assert freq[4] == 0  # probability 0: never taken


def test_top_k_and_top_p_filter_per_row_and_rows_with_other_params_are_untouched():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0]]).expand(600, 4).clone()
    params = [SamplingParams(top_k=1)] * 200 + [SamplingParams(top_p=0.5)] * 200 + [PLAIN] * 200
    tokens = _sample_tokens(logits, params, _gens(600))
    assert set(tokens[:200].tolist()) == {0}  # top-k 1: the argmax
    # top-p 0.5: softmax is [0.61, 0.22, 0.14, 0.03]; the first token already crosses 0.5
    assert set(tokens[200:400].tolist()) == {0}
    assert set(tokens[400:].tolist()) == {0, 1, 2, 3}  # unfiltered rows sample every token


def test_a_rows_token_depends_on_its_own_generator_and_logits_only():
    torch.manual_seed(0)
    logits = torch.randn(6, 50)
    alone = [int(_sample_tokens(logits[i : i + 1], [PLAIN], [torch.Generator().manual_seed(100 + i)])[0]) for i in range(6)]
    together = _sample_tokens(logits, [PLAIN] * 6, _gens(6, base=100)).tolist()
    assert together == alone
    reordered = _sample_tokens(logits.flip(0), [PLAIN] * 6, list(reversed(_gens(6, base=100)))).tolist()
    assert reordered == list(reversed(alone))
    assert _sample_tokens(logits[:0], [], []).shape == (0,)
