"""MaskGIT decoding for the masked DFM: its schedule and invariants (it is a heuristic decoder, so
no law is asserted except in its two limits), the confidence it ranks by, labels and guidance.

Scripted models (fixed logits per position) make the schedule checks exact; the toy mixture's
exact posterior (``tests.support.oracle``) checks labels, guidance and the limits.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

import methods
from methods.maskgit import masked_after
from tests.support.oracle import LOG_ZERO, oracle_for, pattern_frequencies, total_variation, toy_mixture

MIXTURE = toy_mixture()
K = MIXTURE.num_codes
MASK = K


pytestmark = pytest.mark.usefixtures("single_thread")


class Scripted:
    """Fixed logits (K + 1, h, w) for every sample and call (the mask logit at LOG_ZERO unless
    given); records the token grid and time of every call."""

    num_classes = 2

    def __init__(self, logits: torch.Tensor):
        self.logits, self.calls = logits, []

    def __call__(self, x, t, y):
        self.calls.append((x.clone(), t.clone()))
        return self.logits.expand(x.shape[0], *self.logits.shape).clone()


def random_logits(grid, seed=0, scale=2.0):
    logits = scale * torch.randn(K + 1, *grid, generator=torch.Generator().manual_seed(seed))
    logits[MASK] = LOG_ZERO
    return logits


def decode(model, n, grid, steps, *, spec="maskgit", temperature=1.0, cfg_scale=1.0, seed=0, labels=None):
    method = methods.get_method("dfm")(MIXTURE.codebook)
    labels = torch.zeros(n, dtype=torch.long) if labels is None else labels
    return method.sample(
        model,
        labels,
        grid,
        steps=steps,
        temperature=temperature,
        cfg_scale=cfg_scale,
        sampler=spec,
        generator=torch.Generator().manual_seed(seed),
    )


def schedule(length: int, steps: int) -> list[int]:
    """Masked positions before each step and after the last, by the cosine rule, step by step."""
    masked = [length]
    for i in range(steps):
        r = (i + 1) / steps
        target = math.floor(length * math.cos(math.pi * r / 2) + 1e-9)
        masked.append(0 if i == steps - 1 else max(1, min(masked[-1] - 1, target)))
    return masked


def test_the_schedule_by_hand():
    """L = 16 in 4 steps: floor(16 cos(pi r / 2)) = 14, 11, 6 at r = 1/4, 1/2, 3/4, then 0; with as
    many steps as positions, one position per step."""
    assert schedule(16, 4) == [16, 14, 11, 6, 0]
    assert schedule(4, 3) == [4, 3, 2, 0]  # 4 cos(pi/3) = 2: kept whole despite rounding
    assert schedule(24, 24) == list(range(24, -1, -1))
    assert [masked_after(16, m, r) for m, r in [(16, 0.25), (14, 0.5), (11, 0.75), (6, 1.0)]] == [14, 11, 6, 0]


@pytest.mark.parametrize(
    "grid, steps", [((4, 4), 4), ((4, 6), 1), ((4, 6), 2), ((4, 6), 5), ((4, 6), 9), ((4, 6), 24), ((2, 2), 3)]
)
def test_schedule_counts_time_input_and_kept_tokens(grid, steps):
    """Exactly ``steps`` evaluations; before step i exactly schedule(L, N)[i] positions are masked in
    every sample, the time input is 1 - masked / L, a decoded token never changes, and nothing is
    masked at the end."""
    length = grid[0] * grid[1]
    model = Scripted(random_logits(grid))
    out = decode(model, 50, grid, steps)
    expected = schedule(length, steps)
    assert len(model.calls) == steps and out.nfe == steps
    states = [x for x, _ in model.calls] + [out.codes]
    for i, (x, t) in enumerate(model.calls):
        masked = (x == MASK).flatten(1).sum(1)
        assert (masked == expected[i]).all(), (i, masked.tolist(), expected[i])
        assert torch.allclose(t, torch.full_like(t, 1 - expected[i] / length))
    for before, after in zip(states, states[1:]):
        decoded = before != MASK
        assert torch.equal(after[decoded], before[decoded]), "a decoded token changed"
        assert ((after != MASK) & ~decoded).flatten(1).sum(1).tolist() == [
            (before == MASK)[0].sum().item() - (after == MASK)[0].sum().item()
        ] * len(after)
    assert (out.codes != MASK).all() and out.codes.max() < K
    assert out.trace["decoded"] == pytest.approx([1 - m / length for m in expected[:-1]])


def test_more_steps_than_positions_are_refused():
    model = Scripted(random_logits((2, 2)))
    with pytest.raises(ValueError, match=re.escape("'maskgit': 5 steps for 4 positions")):
        decode(model, 2, (2, 2), 5)
    decode(model, 2, (2, 2), 4)  # one position per step is the most


def first_decoded(model_calls, out_codes, grid):
    """Per sample, the flat position index decoded at each step (one per step)."""
    states = [x for x, _ in model_calls] + [out_codes]
    order = []
    for before, after in zip(states, states[1:]):
        newly = ((before == MASK) & (after != MASK)).flatten(1)
        assert (newly.sum(1) == 1).all()
        order.append(newly.int().argmax(1))
    return torch.stack(order, 1)  # (B, steps)


def test_without_choice_noise_ties_keep_higher_positions_first():
    """Equal logits everywhere, so equal confidences: with T_choice = 0 the lowest positions are the
    ones re-masked, and the grid is decoded from the last position to the first, in every sample."""
    logits = torch.zeros(K + 1, 2, 2)
    logits[MASK] = LOG_ZERO
    model = Scripted(logits)
    out = decode(model, 20, (2, 2), 4, spec="maskgit:choice_temperature=0")
    assert (first_decoded(model.calls, out.codes, (2, 2)) == torch.tensor([3, 2, 1, 0])).all()


def test_choice_noise_varies_the_order_from_sample_to_sample():
    """The same equal logits with the default T_choice = 4.5: the Gumbel noise picks the order, so
    the first decoded position differs between samples and covers every position."""
    logits = torch.zeros(K + 1, 2, 2)
    logits[MASK] = LOG_ZERO
    model = Scripted(logits)
    out = decode(model, 200, (2, 2), 4)
    first = first_decoded(model.calls, out.codes, (2, 2))[:, 0]
    assert set(first.tolist()) == {0, 1, 2, 3}


def test_confidence_is_the_untempered_log_probability():
    """Position 0: logits (1, 0, 0, 0, 0), so the draw is code 0 with p = e / (e + 4) = 0.40 untempered
    but 0.9998 at tau = 0.1; position 1: two codes at p = 1/2 either way. Untempered, position 1
    (log 0.5 = -0.69) beats position 0 (-0.90); tempered, position 0 would win. One of the two
    stays masked after the first of two steps: it must be position 0."""
    logits = torch.full((K + 1, 1, 2), LOG_ZERO)
    logits[:K, 0, 0] = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0])
    logits[:2, 0, 1] = 0.0
    model = Scripted(logits)
    decode(model, 100, (1, 2), 2, spec="maskgit:choice_temperature=0", temperature=0.1)
    after_first = model.calls[1][0]
    assert (after_first[:, 0, 0] == MASK).all() and (after_first[:, 0, 1] != MASK).all()


def test_candidates_are_drawn_at_the_temperature():
    """One step decodes everything from softmax(l[:K] / tau): at tau = 0.02 every position takes its
    argmax (ahead of the other codes by 1, so p > 1 - 1e-20 at tau = 0.02 and 0.40 at tau = 1); at tau = 1 not."""
    best = torch.randint(K, (4, 4), generator=torch.Generator().manual_seed(1))
    logits = torch.cat([torch.nn.functional.one_hot(best, K).permute(2, 0, 1).float(), torch.full((1, 4, 4), LOG_ZERO)])
    cold = decode(Scripted(logits), 20, (4, 4), 1, temperature=0.02)
    assert (cold.codes == best).all()
    warm = decode(Scripted(logits), 20, (4, 4), 1, temperature=1.0)
    assert not (warm.codes == best).all()


# ------------------------------------------------------------------ labels, guidance and the limits


def oracle_frequencies(steps, *, spec="maskgit", cfg_scale=1.0, n=2000, classes=(0, 1)):
    labels = torch.tensor(classes).repeat_interleave(n)
    out = decode(
        oracle_for("dfm", MIXTURE), len(labels), MIXTURE.grid, steps, spec=spec, cfg_scale=cfg_scale, labels=labels
    )
    return {y: pattern_frequencies(MIXTURE, out.codes, labels, y) for y in classes}, out


def test_labels_choose_the_class_law():
    """Each class's most likely pattern (m0 for class 0, m3 for class 1) is its most frequent sample
    (measured 0.52 and 0.50 at 4 steps, default T_choice)."""
    freq, _ = oracle_frequencies(4)
    assert int(freq[0].argmax()) == 0 and int(freq[1].argmax()) == 3, freq


def test_guidance_moves_the_law_towards_the_class():
    """w = 3 on the logits: class 0's favoured m0 rises (measured 0.52 -> 0.81) and m3, which the
    class disfavours relative to the marginal, falls (0.073 -> 0.003). NFE doubles."""
    plain, out_plain = oracle_frequencies(4, classes=(0,), n=1000)
    guided, out_guided = oracle_frequencies(4, classes=(0,), n=1000, cfg_scale=3.0)
    assert guided[0][0] > plain[0][0] + 0.1 and guided[0][3] < plain[0][3] / 2, (plain, guided)
    assert out_plain.nfe == 4 and out_guided.nfe == 8


def test_the_two_limits_of_choice_noise():
    """One position per step (steps = L = 4). With overwhelming choice noise (T_choice = 50) the order
    is uniformly random and each position is drawn from its exact conditional, so the law is the
    toy law (TV 0.02 measured); without it (T_choice = 0) the most confident position goes first,
    which sharpens towards the mode (m0's share for class 0: 0.87 against 0.47)."""
    noisy, _ = oracle_frequencies(4, spec="maskgit:choice_temperature=50")
    for y in (0, 1):
        assert total_variation(noisy[y], MIXTURE.weights[y]) < 0.05, noisy[y]
    greedy, _ = oracle_frequencies(4, spec="maskgit:choice_temperature=0", classes=(0,))
    assert greedy[0][0] > noisy[0][0] + 0.2, (greedy, noisy)


def test_only_the_masked_dfm_runs_maskgit():
    supported = [name for name in methods.method_names() if "maskgit" in methods.get_method(name).supported_samplers()]
    assert supported == ["dfm"]
    message = "sampler 'maskgit' has no parameter 'rtol'; its parameters: choice_temperature"
    with pytest.raises(ValueError, match=message):
        methods.build_sampler("maskgit:rtol=1")
    with pytest.raises(ValueError, match="choice_temperature must be >= 0"):
        methods.build_sampler("maskgit", choice_temperature=-1.0)
    assert methods.build_sampler("maskgit").label == "maskgit:choice_temperature=4.5"
