"""Honest accuracy comparisons: a confidence interval per method, and between two methods on
the same questions a paired test and an interval on the difference.

Methods are compared on the same questions, so the right test is paired: McNemar's exact
test looks only at the questions where exactly one of the two methods is right, and the
difference's interval (Newcombe's method 10) accounts for the pairing. All are closed-form,
so no statistics package is needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def wilson_interval(correct: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (well-behaved at 0, 1 and small n)."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts.

    `only_a`: questions A got right and B wrong; `only_b`: the reverse. Under the null each
    discordant question is a fair coin, so p = P(Binomial(n, 1/2) at least as extreme).
    """
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_difference_interval(both: int, only_a: int, only_b: int, neither: int) -> tuple[float, float]:
    """95% interval for accuracy(A) - accuracy(B) on paired answers: Newcombe's method 10
    (Stat. Med. 17:2635, 1998; the worked form in Altman et al., *Statistics with
    Confidence*, 2000, ch. 6): the two accuracies' Wilson intervals, combined with the
    correlation between the paired answers (continuity-corrected toward 0). At 30-50
    discordant questions out of 200 it is about +-7 to 10 points wide: a p above 0.05 there
    is no evidence of a tie."""
    n = both + only_a + only_b + neither
    if n == 0:
        return -1.0, 1.0
    p1, p2 = (both + only_a) / n, (both + only_b) / n
    l1, u1 = wilson_interval(both + only_a, n)
    l2, u2 = wilson_interval(both + only_b, n)
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    phi = 0.0
    if margins > 0:
        cross = both * neither - only_a * only_b
        corrected = cross - n / 2 if cross > n / 2 else (cross if cross < 0 else 0.0)
        phi = corrected / math.sqrt(margins)
    below = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    above = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return max(-1.0, p1 - p2 - below), min(1.0, p1 - p2 + above)


@dataclass
class PairedComparison:
    """A against B on the questions both answered."""

    n: int
    accuracy_a: float
    accuracy_b: float
    only_a: int  # right in A, wrong in B
    only_b: int
    p_value: float
    both: int | None = None  # right in both (None: pooled over seeds, where it is no count)

    @property
    def difference(self) -> float:
        return self.accuracy_a - self.accuracy_b

    @property
    def interval(self) -> tuple[float, float] | None:
        """95% interval on `difference` (Newcombe's method 10); None for pooled seeds."""
        if self.both is None:
            return None
        neither = self.n - self.both - self.only_a - self.only_b
        return paired_difference_interval(self.both, self.only_a, self.only_b, neither)


def verdict(
    difference: float, interval: tuple[float, float] | None, p_adjusted: float, margin: float | None
) -> str:
    """The one word a declared difference earns, the same in every table: *better* or *worse*
    only when its adjusted p is below 0.05; *equivalent within +-margin* only when its 95%
    interval lies inside the declared margin; otherwise *inconclusive* (a p above 0.05 with
    a wide interval is no evidence of a tie)."""
    if p_adjusted < 0.05:
        return "better" if difference > 0 else "worse"
    if margin is not None and interval is not None and -margin < interval[0] and interval[1] < margin:
        return f"equivalent within ±{100 * margin:g} pts"
    return "inconclusive"


def compare_paired(a: dict[str, bool], b: dict[str, bool]) -> PairedComparison:
    """Correctness by question id for two methods -> the paired comparison on shared ids."""
    ids = sorted(a.keys() & b.keys())
    n = len(ids)
    only_a = sum(a[i] and not b[i] for i in ids)
    only_b = sum(b[i] and not a[i] for i in ids)
    acc_a = sum(a[i] for i in ids) / n if n else 0.0
    acc_b = sum(b[i] for i in ids) / n if n else 0.0
    both = sum(a[i] and b[i] for i in ids)
    return PairedComparison(n, acc_a, acc_b, only_a, only_b, mcnemar_exact(only_a, only_b), both)


def compare_over_seeds(a: list[dict[str, bool]], b: list[dict[str, bool]]) -> PairedComparison:
    """Sampled runs, several seeds each -> one paired comparison on the questions every run answered.

    Per question, each method's score is its share of seeds that got it right. `only_a` counts
    the questions where A's share is higher, `only_b` where B's is, and the p-value is the exact
    sign test on those counts (ties drop out): with one seed per method this is McNemar's test.
    Pooling seeds per question keeps the questions as the unit, so seeds do not pass for
    independent questions.
    """
    if not a or not b:
        raise ValueError("each method needs at least one seed's results")
    ids = sorted(set.intersection(*(set(run) for run in a + b)))

    def share(runs: list[dict[str, bool]], i: str) -> float:
        return sum(run[i] for run in runs) / len(runs)

    only_a = sum(share(a, i) > share(b, i) for i in ids)
    only_b = sum(share(b, i) > share(a, i) for i in ids)
    n = len(ids)
    acc_a = sum(share(a, i) for i in ids) / n if n else 0.0
    acc_b = sum(share(b, i) for i in ids) / n if n else 0.0
    return PairedComparison(n, acc_a, acc_b, only_a, only_b, mcnemar_exact(only_a, only_b))


def holm_adjust(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of several p-values (same order as given).

    Testing k configurations against one baseline at 0.05 each would call one in k/20 a
    difference by chance; Holm keeps the chance of any false call at 0.05 without assuming
    the tests are independent.
    """
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [0.0] * len(p_values)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted
