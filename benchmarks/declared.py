"""The declared comparisons of benchmarks/declared.yaml, computed from the stored results.

Each family is one baseline against a few configurations on one model's results, one task
and one split: exact McNemar per comparison, Holm within the family only, a 95% interval on
each paired difference (Newcombe), and the verdict word every table prints (`stats.verdict`).
A comparison that is not in the file is exploratory, wherever it is printed: `find` answers
None for it. The file's git history is the pre-registration.

    python benchmarks/declared.py            # every declared comparison, as a table
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import folder_name  # noqa: E402

from latentmas.errors import LatentMASError, run_script  # noqa: E402
from latentmas.evaluation.evaluate import read_results  # noqa: E402
from latentmas.evaluation.stats import compare_paired, holm_adjust, verdict  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DECLARED = Path(__file__).with_name("declared.yaml")


@dataclass
class Comparison:
    """One declared comparison, as computed from the results on its split."""

    family: str
    results: str
    task: str
    config: str
    baseline: str
    n: int
    accuracy: float
    baseline_accuracy: float
    difference: float
    interval: tuple[float, float]
    only_config: int
    only_baseline: int
    p: float
    p_holm: float
    margin: float
    verdict: str
    complete: bool  # every question of the split answered by both


def load(path: Path = DECLARED) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def split_index(question_id: str) -> int:
    """A question's row in its file: ids end in it (gsm8k-12, HumanEval/12)."""
    tail = question_id.rsplit("-", 1)[-1].rsplit("/", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def in_split(split: dict, question_id: str) -> bool:
    index = split_index(question_id)
    return any(low <= index <= high for low, high in split["questions"])


def correctness(results: Path, task: str, config: str, split: dict) -> dict[str, bool]:
    path = results / task / folder_name(config, 0, False) / "results.jsonl"
    return {r.id: r.correct for r in read_results(path) if in_split(split, r.id)}


def family_comparisons(family: dict, splits: dict, root: Path = ROOT) -> list[Comparison]:
    """A family's comparisons with Holm across them (those with results so far)."""
    split = splits[family["split"]]
    size = sum(high - low + 1 for low, high in split["questions"])
    results = root / family["results"]
    base = correctness(results, family["task"], family["baseline"], split)
    tests = {}
    for config in family["configs"]:
        mine = correctness(results, family["task"], config, split)
        if mine and base:
            tests[config] = compare_paired(mine, base)
    adjusted = dict(zip(tests, holm_adjust([t.p_value for t in tests.values()])))
    rows = []
    for config, test in tests.items():
        interval = test.interval
        rows.append(
            Comparison(
                family=family["name"],
                results=family["results"],
                task=family["task"],
                config=config,
                baseline=family["baseline"],
                n=test.n,
                accuracy=test.accuracy_a,
                baseline_accuracy=test.accuracy_b,
                difference=test.difference,
                interval=interval,
                only_config=test.only_a,
                only_baseline=test.only_b,
                p=test.p_value,
                p_holm=adjusted[config],
                margin=family["margin"],
                verdict=verdict(test.difference, interval, adjusted[config], family["margin"]),
                complete=test.n == size,
            )
        )
    return rows


def all_comparisons(path: Path = DECLARED, root: Path = ROOT) -> list[Comparison]:
    declared = load(path)
    return [
        c for family in declared["families"] for c in family_comparisons(family, declared["splits"], root)
    ]


def find(
    comparisons: list[Comparison], results: str, task: str, config: str, baseline: str
) -> Comparison | None:
    """The declared comparison of `config` against `baseline` there; None: exploratory."""
    return next(
        (
            c
            for c in comparisons
            if (c.results, c.task, c.config, c.baseline) == (results.rstrip("/"), task, config, baseline)
        ),
        None,
    )


def points(value: float) -> str:
    return f"{100 * value:+.1f}"


def described(c: Comparison) -> str:
    """A difference as every table prints it: points, interval, discordant, p's, verdict."""
    low, high = c.interval
    running = "" if c.complete else ", running"
    return (
        f"{points(c.difference)} [{points(low)}, {points(high)}] ({c.only_config}/{c.only_baseline}; "
        f"p {p_text(c.p)}, Holm {p_text(c.p_holm)}{running}) **{c.verdict}**"
    )


def p_text(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def table(comparisons: list[Comparison]) -> str:
    lines = [
        "| family | config | n | accuracy % | baseline % | difference, pts [95% CI] (only config/only baseline; p, Holm) verdict |",
        "|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        lines.append(
            f"| {c.family} | {c.config} | {c.n} | {100 * c.accuracy:.1f} | {100 * c.baseline_accuracy:.1f} "
            f"({c.baseline}) | {described(c)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--declared", type=Path, default=DECLARED)
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    if not args.declared.is_file():
        raise LatentMASError(f"no declared comparisons at {args.declared}")
    comparisons = all_comparisons(args.declared)
    if args.json:
        import json

        print(json.dumps([asdict(c) for c in comparisons], indent=1))
    else:
        print(table(comparisons))
    return 0


if __name__ == "__main__":
    run_script(main)
