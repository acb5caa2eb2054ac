"""Numbers that cannot go stale: intervals on paired differences, the verdict words, and the
declared comparisons computed from the stored results."""

from __future__ import annotations

import random

import pytest

from latentmas.evaluation.stats import compare_paired, paired_difference_interval, verdict


def test_the_paired_interval_covers_the_true_difference_95_times_in_100():
    """Simulated paired answers (two methods that agree on most questions, as ours do): the
    95% interval holds the true difference of accuracies in 93-97% of 2,000 runs."""
    rng = random.Random(0)
    cells = {"both": 0.40, "only_a": 0.12, "only_b": 0.08, "neither": 0.40}  # true difference +0.04
    covered = 0
    for _ in range(2000):
        draws = rng.choices(list(cells), weights=list(cells.values()), k=200)
        counts = [draws.count(k) for k in cells]
        low, high = paired_difference_interval(*counts)
        covered += low <= 0.04 <= high
    assert 0.93 <= covered / 2000 <= 0.97


def test_the_interval_is_antisymmetric_and_holds_the_estimate():
    low, high = paired_difference_interval(100, 20, 30, 50)
    assert low < (20 - 30) / 200 < high
    assert paired_difference_interval(100, 30, 20, 50) == pytest.approx((-high, -low))
    assert paired_difference_interval(0, 0, 0, 0) == (-1.0, 1.0)
    wide = paired_difference_interval(80, 20, 20, 80)  # 40 discordant of 200: no evidence either way
    assert wide[0] < -0.06 and wide[1] > 0.06


def test_compare_paired_carries_the_interval():
    a = {str(i): i % 3 == 0 for i in range(200)}
    b = {str(i): i % 4 == 0 for i in range(200)}
    test = compare_paired(a, b)
    both = sum(a[i] and b[i] for i in a)
    assert test.interval == paired_difference_interval(
        both, test.only_a, test.only_b, 200 - both - test.only_a - test.only_b
    )


@pytest.mark.parametrize(
    ("difference", "interval", "p", "margin", "word"),
    [
        (0.08, (0.02, 0.14), 0.01, 0.05, "better"),
        (-0.08, (-0.14, -0.02), 0.04, 0.05, "worse"),
        (-0.08, (-0.14, -0.02), 0.06, 0.05, "inconclusive"),  # significant raw, not after Holm
        (0.01, (-0.03, 0.04), 0.7, 0.05, "equivalent within ±5 pts"),
        (0.01, (-0.06, 0.08), 0.7, 0.05, "inconclusive"),  # p > 0.05 is no tie
    ],
)
def test_the_words_follow_the_numbers(difference, interval, p, margin, word):
    assert verdict(difference, interval, p, margin) == word


def test_the_declared_comparisons_are_computed_from_the_stored_results(benchmark_script):
    declared = benchmark_script("declared")
    comparisons = declared.all_comparisons()
    families = {c.family for c in comparisons}
    assert len(families) >= 10 and all(c.n > 0 for c in comparisons)
    for family in families:  # Holm within a family: never below the raw p, and a family of one keeps it
        members = [c for c in comparisons if c.family == family]
        assert all(c.p_holm >= c.p - 1e-12 for c in members)
        if len(members) == 1:
            assert members[0].p_holm == pytest.approx(members[0].p)
    relay = declared.find(
        comparisons, "benchmarks/results/quality-1.5b", "gsm8k", "latent_mas[relay=0.3]", "single"
    )
    assert relay is not None and relay.n == 200
    exploratory = declared.find(
        comparisons,
        "benchmarks/results/quality-1.5b",
        "humaneval",
        "latent_mas[from=0.5,enter=true,realign=none]",
        "text_mas",
    )
    assert exploratory is None  # re-entry vs TextMAS was never declared
