"""Degeneration figures, implicit-reward accuracy and margins: hand-checked cases and the tiny model."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from kto_pipeline.evaluation.generate import Generation, prompt_ids
from kto_pipeline.evaluation.metrics import (
    bootstrap_interval,
    completion_logps,
    degeneration,
    repeated_ngrams,
    reward_accuracy,
    score_labelled,
    tokenize_row,
)

torch = pytest.importorskip("torch")


def test_degeneration_by_hand():
    gens = [
        Generation("a b c d a b c d", False, 8),  # 5 four-grams, abcd twice: 1 repeat; hit the limit
        Generation("   ", True, 1),  # blank
        Generation("Paris is the capital of France.", True, 7),  # 3 four-grams, none repeated
    ]
    assert repeated_ngrams("a b c d a b c d") == (1, 5)
    assert repeated_ngrams("too short") == (0, 0)
    d = degeneration(gens)
    assert d.answers == 3
    assert d.empty == pytest.approx(1 / 3) and d.hit_limit == pytest.approx(1 / 3)
    assert d.repeated_ngrams == pytest.approx(1 / 8)  # pooled: 1 repeat in 5 + 0 + 3 n-grams
    assert d.mean_tokens == pytest.approx(16 / 3)
    loop = degeneration([Generation("yes " * 50, False, 50)])
    assert loop.repeated_ngrams == pytest.approx(46 / 47) and loop.hit_limit == 1.0
    with pytest.raises(ValueError):
        degeneration([])


def test_bootstrap_interval():
    assert bootstrap_interval(np.ones(10)) == (1.0, 1.0)
    v = np.array([1, 0] * 50, dtype=float)
    lo, hi = bootstrap_interval(v, seed=3)
    assert (lo, hi) == bootstrap_interval(v, seed=3)  # seeded
    assert 0.35 < lo < 0.5 < hi < 0.65  # ~ 0.5 +- 1.96 * 0.05
    # two prompts, each with 50 identical rows: the prompt is the unit, so the interval spans 0 to 1
    assert bootstrap_interval(v[np.argsort(v)], groups=np.repeat([0, 1], 50), seed=3) == (0.0, 1.0)


def test_reward_accuracy_by_hand():
    logratios = np.array([1.0, -1.0, 0.2, -0.5, 0.0])
    labels = np.array([True, False, False, True, True])
    zero = reward_accuracy(logratios, labels, beta=0.1, reference_point="zero")
    assert zero.correct == (1.0, 1.0, 0.0, 0.0, 0.5)  # at the reference point: half
    assert zero.accuracy == pytest.approx(0.5) and zero.kl == 0.0
    # KTO's reference point: with KL 0.3, the undesirable row at 0.2 is below it (right), the tie at 0 is wrong
    kl = reward_accuracy(logratios, labels, beta=0.1, kl=0.3)
    assert kl.correct == (1.0, 1.0, 1.0, 0.0, 0.0) and kl.kl == 0.3
    assert kl.rewards == pytest.approx((0.1, -0.1, 0.02, -0.05, 0.0))
    assert kl.reward_margin == pytest.approx(np.mean([0.1, -0.05, 0.0]) - np.mean([-0.1, 0.02]))
    # a negative KL estimate is clamped to 0, as in TRL
    assert reward_accuracy(logratios, labels, beta=0.1, kl=-2.0).correct == zero.correct
    assert math.isnan(kl.logprob_margin)  # no policy log-probs given
    with pytest.raises(ValueError, match="reference_point"):
        reward_accuracy(logratios, labels, beta=0.1, reference_point="mean")
    with pytest.raises(ValueError, match="beta"):
        reward_accuracy(logratios, labels, beta=0)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, tok


ROWS = [
    ([{"role": "user", "content": "What is the capital of France?"}], "The capital of France is Paris.", True),
    ([{"role": "user", "content": "What is the capital of France?"}], "Berlin.", False),
    ([{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}], "Hello! How can I help?", True),
    ([{"role": "user", "content": "Hi"}], "Go away.", False),
    ([{"role": "user", "content": "What does a list hold?"}], "A list holds items in order.", True),
    ([{"role": "user", "content": "What does a list hold?"}], "Nothing at all, ever.", False),
]


def _naive_logps(model, tok, prompt, completion):
    p, c = tokenize_row(tok, prompt, completion)
    logits = model(torch.tensor([p + c])).logits[0].float().log_softmax(-1)
    return logits[len(p) - 1 : -1].gather(1, torch.tensor(c)[:, None]).sum()


def test_completion_logps_match_a_full_forward(tiny):
    model, tok = tiny
    p, c = tokenize_row(tok, *ROWS[0][:2])
    assert p == prompt_ids(tok, ROWS[0][0])  # scored after the exact prompt that generation sees
    assert tok.convert_tokens_to_ids("<|im_end|>") in c  # the end of turn is part of the completion
    sums, counts = completion_logps(model, tok, [r[0] for r in ROWS], [r[1] for r in ROWS], batch_size=4)
    with torch.no_grad():
        naive = [float(_naive_logps(model, tok, r[0], r[1])) for r in ROWS]
    assert sums == pytest.approx(naive, rel=1e-4)
    assert counts.tolist() == [len(tokenize_row(tok, r[0], r[1])[1]) for r in ROWS]


def test_reward_accuracy_on_the_tiny_model(tiny):
    model, tok = tiny
    prompts, completions, labels = zip(*ROWS)
    groups = [str(p) for p in prompts]
    same = score_labelled(model, model, tok, prompts, completions, labels, beta=0.1, groups=groups)
    assert same.accuracy == 0.5 and same.kl == 0.0 and same.reward_margin == 0.0  # the reference itself: chance
    # a policy pushed towards the desirable completions and away from the undesirable ones
    policy = copy.deepcopy(model).train()
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
    for _ in range(15):
        loss = sum((-1 if lab else 1) * _naive_logps(policy, tok, p, c) for p, c, lab in ROWS) / len(ROWS)
        opt.zero_grad()
        loss.backward()
        opt.step()
    policy.eval()
    for point in ("kl", "zero"):
        good = score_labelled(policy, model, tok, prompts, completions, labels, beta=0.1, reference_point=point)
        assert good.accuracy == 1.0 and (good.low, good.high) == (1.0, 1.0)
        assert good.reward_margin > 0 and good.logprob_margin > 0
    flipped = score_labelled(policy, model, tok, prompts, completions, [not x for x in labels], beta=0.1)
    assert flipped.accuracy == 0.0 and flipped.reward_margin < 0
