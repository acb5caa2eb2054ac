"""Side by side: the same quality configurations on two models (scale), or on one model in
two runs that should agree (float32 against bfloat16). Reads the folders that
`benchmarks/quality.py` writes; only `--quick` runs anything.

    # a first look in under 15 minutes on 2 CPU cores: both embedded Qwen models, 8 GSM8K
    # questions, 192 tokens, four configurations, then the same table
    python benchmarks/scale.py --quick

    # the scale table: accuracy at each size, paired tests against single, m = 0 and TextMAS
    # on each model (exact McNemar, raw and Holm-adjusted across the configurations), decoded
    # tokens against TextMAS's, whether each latent configuration meets the user's target, a plot;
    # the states handoff also against its text twin (the same 64-token messages as plain text)
    python benchmarks/scale.py --models "0.5B=benchmarks/results/quality,1.5B=benchmarks/results/quality-1.5b"

    # do two runs of the same configurations agree? (e.g. float32 against bfloat16)
    python benchmarks/scale.py --pairs "float32=benchmarks/results/quality,bfloat16=benchmarks/results/quality-0.5b-bf16" \
        --configs single,latent_mas
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import declared  # noqa: E402
import quality  # noqa: E402
from quality import folder_name, split_configs  # noqa: E402

from latentmas.errors import LatentMASError, run_script  # noqa: E402
from latentmas.evaluation.evaluate import read_results  # noqa: E402
from latentmas.evaluation.records import read_environments  # noqa: E402
from latentmas.evaluation.stats import compare_paired, wilson_interval  # noqa: E402
from latentmas.evaluation.tasks import get_task  # noqa: E402

DEFAULT_CONFIGS = "single,text_mas,latent_mas,latent_mas[m=0],latent_mas[m=1],latent_mas[realign=none]"
BASELINES = ("single", "latent_mas[m=0]", "text_mas")
TEXT_MAS_MARGIN = 0.02  # the user's target (issue 22): >= single, >= text_mas - 2 points, <= half its tokens
TARGET_MARK = {True: "yes", False: "no", None: "—"}  # met, missed, not judged (a baseline, a run going)
# A handoff that decodes messages, against the same messages passed as plain text: what its
# states add beyond the words (issue 22, item 3). One declared comparison per model, no Holm.
TEXT_TWINS = {"latent_mas[handoff=states]": "text_mas[msg=64]"}
QUICK_MODELS = {"0.5B": "qwen2.5-coder-0.5b", "1.5B": "qwen2.5-coder-1.5b"}
QUICK_CONFIGS = "single,text_mas,latent_mas,latent_mas[m=0]"


def load(folder: Path, task: str, config: str) -> dict:
    """A configuration's results by question id, on the first `limit` questions by id order
    of the task (the quality runs answer the first N of the same file)."""
    path = folder / task / folder_name(config, 0, False) / "results.jsonl"
    results = read_results(path)
    grading = get_task(task).grading
    if any(r.grading != grading for r in results):
        raise LatentMASError(
            f"{path} holds answers graded by an earlier rule; grade them again with "
            f"`python benchmarks/quality.py --report-only --tasks {task} --out {folder}` (and its --model, --limit)"
        )
    return {r.id: r for r in results}


def _keep_first(rows: dict, ids: list[str] | None) -> dict:
    return rows if ids is None else {i: rows[i] for i in ids if i in rows}


def declared_name(folder: Path) -> str:
    """How declared.yaml names a results folder: its path from the repository's root."""
    try:
        return str(folder.resolve().relative_to(declared.ROOT))
    except ValueError:
        return str(folder)


def versus(
    comparisons: list, folder: Path, task: str, config: str, base: str, mine: dict, theirs: dict
) -> dict | None:
    """A config against a baseline: the declared comparison where there is one (Holm within
    its family, its verdict), else the same numbers labelled exploratory (no Holm, no verdict)."""
    if not mine or not theirs or config == base:
        return None
    test = compare_paired(mine, theirs)
    found = declared.find(comparisons, declared_name(folder), task, config, base)
    return {
        "n": test.n,
        "difference": test.difference,
        "interval": list(test.interval),
        "only_config": test.only_a,
        "only_baseline": test.only_b,
        "p": test.p_value,
        "p_holm": None if found is None else found.p_holm,
        "verdict": "exploratory" if found is None else found.verdict,
        "family": None if found is None else found.family,
    }


def provenance(folder: Path, task: str, config: str) -> tuple[str, str]:
    """(the CPUs, the batch sizes) a run's answers were computed on, from its folder."""
    run = folder / task / folder_name(config, 0, False)
    cpus = sorted({e.get("cpu", "?") for e in read_environments(run)}) or ["not logged"]
    summary = run / "summary.json"
    batch = str(json.loads(summary.read_text()).get("batch_size", "?")) if summary.is_file() else "?"
    return " / ".join(short_cpu(c) for c in cpus), batch


def short_cpu(name: str) -> str:
    return name.replace("(R)", "").replace("(TM)", "").replace(" Processor", "").split(" @")[0].strip()


def scale_table(
    models: dict[str, Path], task: str, configs: list[str], limit: int
) -> tuple[str, list[dict], list[dict]]:
    rows, twins = [], []
    comparisons = declared.all_comparisons()
    for model, folder in models.items():
        answers = {c: load(folder, task, c) for c in configs}
        order = _first_ids(answers, limit)
        answers = {c: _keep_first(a, order) for c, a in answers.items()}
        for config in (c for c in configs if c in TEXT_TWINS):
            twin = TEXT_TWINS[config]
            twin_answers = answers[twin] if twin in answers else _keep_first(load(folder, task, twin), order)
            pair = _twin_comparison(model, config, answers[config], twin, twin_answers, len(order))
            for t in pair:
                found = declared.find(comparisons, declared_name(folder), task, config, twin)
                t["verdict"] = "exploratory" if found is None else found.verdict
                t["p_holm"] = None if found is None else found.p_holm
            twins += pair
        correct = {c: {i: r.correct for i, r in a.items()} for c, a in answers.items()}
        for config in configs:
            a = answers[config]
            if not a:
                continue
            n, k = len(a), sum(r.correct for r in a.values())
            low, high = wilson_interval(k, n)
            cpu, batch = provenance(folder, task, config)
            row = {
                "model": model,
                "config": config,
                "n": n,
                "complete": n == len(order),  # a run still going has answered fewer
                "accuracy": k / n,
                "ci": [low, high],
                "tokens": sum(r.output_tokens for r in a.values()) / n,
                "seconds": sum(r.seconds for r in a.values()) / n,
                "cpu": cpu,
                "batch": batch,
            }
            for base in BASELINES:
                row[f"vs {base}"] = versus(
                    comparisons, folder, task, config, base, correct.get(config), correct.get(base)
                )
            rows.append(row)
        text_mas = next((r for r in rows if r["model"] == model and r["config"] == "text_mas"), None)
        single = next((r for r in rows if r["model"] == model and r["config"] == "single"), None)
        for row in rows:
            if row["model"] == model:
                compared = text_mas is not None and row is not text_mas
                row["tokens vs text_mas"] = row["tokens"] / text_mas["tokens"] - 1 if compared else None
                row["user target"] = _user_target(row, single, text_mas)

    def cell(v) -> str:
        if v is None:
            return "—"
        low, high = v["interval"]
        holm = "" if v["p_holm"] is None else f", Holm {_p(v['p_holm'])}"
        return (
            f"{100 * v['difference']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] ({v['only_config']}/"
            f"{v['only_baseline']}; p {_p(v['p'])}{holm}) {v['verdict']}"
        )

    lines = [
        f"### {task}: accuracy at each size (first {limit} questions; vs = points [95% CI of the paired "
        "difference], discordant config/baseline, exact McNemar p; a declared comparison (benchmarks/declared.yaml) "
        "adds Holm within its family and its verdict, any other is exploratory)",
        "",
        "| model | config | n | accuracy % [95% CI] | vs single | vs m = 0 | vs TextMAS | decoded tokens/q "
        "| tokens vs TextMAS | ≥ single, ≥ TextMAS − 2, ≤ ½ its tokens | s/q | CPU | batch |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        share = "—" if r["tokens vs text_mas"] is None else f"{100 * r['tokens vs text_mas']:+.0f}%"
        target = TARGET_MARK[r["user target"]]
        lines.append(
            f"| {r['model']} | {r['config']} | {r['n'] if r['complete'] else str(r['n']) + ' (running)'} "
            f"| {100 * r['accuracy']:.1f} "
            f"[{100 * r['ci'][0]:.1f}, {100 * r['ci'][1]:.1f}] | {cell(r['vs single'])} | "
            f"{cell(r['vs latent_mas[m=0]'])} | {cell(r['vs text_mas'])} | {r['tokens']:.0f} | {share} | "
            f"{target} | {r['seconds']:.1f} | {r['cpu']} | {r['batch']} |"
        )
    if twins:
        lines += [
            "",
            f"### {task}: each handoff against the same messages passed as plain text (exact McNemar; "
            "declared once per model and task in benchmarks/declared.yaml)",
            "",
            "| model | handoff | text twin | n | handoff % | text twin % | difference [95% CI] (only handoff/only twin; p) "
            "| verdict | decoded tokens/q, handoff / twin |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for t in twins:
            low, high = t["interval"]
            lines.append(
                f"| {t['model']} | {t['config']} | {t['twin']} | {t['n']}{'' if t['complete'] else ' (running)'} | "
                f"{100 * t['accuracy']:.1f} | {100 * t['twin_accuracy']:.1f} | {100 * t['difference']:+.1f} "
                f"[{100 * low:+.1f}, {100 * high:+.1f}] ({t['only_config']}/{t['only_twin']}; p {_p(t['p'])}) | "
                f"{t['verdict']} | {t['tokens']:.0f} / {t['twin_tokens']:.0f} |"
            )
    return "\n".join(lines), rows, twins


def _twin_comparison(
    model: str, config: str, answers: dict, twin: str, twin_answers: dict, questions: int
) -> list:
    """A handoff (a key of TEXT_TWINS) against its text twin on the questions both answered:
    one row, or none when they share no question."""
    shared = sorted(answers.keys() & twin_answers.keys())
    if not shared:
        return []
    a, b = answers, twin_answers
    test = compare_paired({i: a[i].correct for i in shared}, {i: b[i].correct for i in shared})
    return [
        {
            "model": model,
            "config": config,
            "twin": twin,
            "n": test.n,
            "complete": test.n == questions,
            "accuracy": test.accuracy_a,
            "twin_accuracy": test.accuracy_b,
            "difference": test.difference,
            "interval": list(test.interval),
            "only_config": test.only_a,
            "only_twin": test.only_b,
            "p": test.p_value,
            "tokens": sum(a[i].output_tokens for i in shared) / len(shared),
            "twin_tokens": sum(b[i].output_tokens for i in shared) / len(shared),
        }
    ]


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _is_baseline(config: str) -> bool:
    """Single and every TextMAS variant: rows the user's target is measured against, not judged by."""
    return config == "single" or config.startswith("text_mas")


def _user_target(row: dict, single: dict | None, text_mas: dict | None) -> bool | None:
    """Whether a latent configuration meets the goal a user cares about, on point estimates:
    at least the single agent's accuracy, at most 2 points below TextMAS's, with at most half
    TextMAS's decoded tokens. None for the baselines themselves, or when a row is missing or its
    run still going."""
    if single is None or text_mas is None or _is_baseline(row["config"]):
        return None
    if not (row["complete"] and single["complete"] and text_mas["complete"]):
        return None
    tie = 1e-9  # accuracies are ratios of counts: 0.565 must reach 0.585 - 0.02
    return (
        row["accuracy"] + tie >= single["accuracy"]
        and row["accuracy"] + tie >= text_mas["accuracy"] - TEXT_MAS_MARGIN
        and row["tokens"] <= text_mas["tokens"] / 2
    )


def target_summary(tables: dict[str, list[dict]]) -> str:
    """One line per latent configuration: where it meets the user's target, over every model
    and task tabled, and whether it meets it everywhere (the bar for becoming the default)."""
    columns = [(r["model"], task) for task, rows in tables.items() for r in rows]
    columns = list(dict.fromkeys(columns))
    found = {(r["config"], r["model"], task): r["user target"] for task, rows in tables.items() for r in rows}
    configs = [c for c in dict.fromkeys(config for config, _, _ in found) if not _is_baseline(c)]
    lines = [
        "### The user's target: ≥ single, ≥ TextMAS − 2 points, ≤ half TextMAS's decoded tokens (point estimates)",
        "",
        "| config | " + " | ".join(f"{model} {task}" for model, task in columns) + " | everywhere |",
        "|---|" + "---|" * (len(columns) + 1),
    ]
    for config in configs:
        cells = [found.get((config, model, task)) for model, task in columns]
        everywhere = True if all(c is True for c in cells) else (False if False in cells else None)
        lines.append(
            f"| {config} | " + " | ".join(TARGET_MARK[c] for c in cells) + f" | {TARGET_MARK[everywhere]} |"
        )
    return "\n".join(lines)


def _first_ids(answers: dict[str, dict], limit: int) -> list[str] | None:
    """The ids of the first `limit` questions: ids end in their row index (gsm8k-12,
    HumanEval/12), so they sort back into file order."""
    ids = set().union(*(a.keys() for a in answers.values()))

    def index(i: str) -> tuple:
        tail = i.rsplit("-", 1)[-1].rsplit("/", 1)[-1]
        return (int(tail), i) if tail.isdigit() else (10**9, i)

    return sorted(ids, key=index)[:limit]


def pairs_table(runs: dict[str, Path], task: str, configs: list[str], limit: int) -> tuple[str, list[dict]]:
    (name_a, folder_a), (name_b, folder_b) = runs.items()
    lines = [
        f"### {task}: {name_a} against {name_b} on the same questions (first {limit})",
        "",
        f"| config | n | {name_a} % | {name_b} % | difference (pts) | right only in {name_a} / only in {name_b} "
        "| exact McNemar p | identical final texts |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    for config in configs:
        a, b = load(folder_a, task, config), load(folder_b, task, config)
        order = _first_ids({"a": a, "b": b}, limit)
        a, b = _keep_first(a, order), _keep_first(b, order)
        shared = sorted(a.keys() & b.keys())
        if not shared:
            continue
        test = compare_paired({i: a[i].correct for i in shared}, {i: b[i].correct for i in shared})
        same = sum(a[i].final_text == b[i].final_text for i in shared)
        rows.append(
            {"config": config, "n": test.n, **{k: getattr(test, k) for k in ("only_a", "only_b", "p_value")}}
        )
        lines.append(
            f"| {config} | {test.n} | {100 * test.accuracy_a:.1f} | {100 * test.accuracy_b:.1f} | "
            f"{100 * test.difference:+.1f} | {test.only_a} / {test.only_b} | {test.p_value:.3f} | "
            f"{same}/{test.n} |"
        )
    return "\n".join(lines), rows


def plot(rows: list[dict], path: Path, task: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    configs = list(dict.fromkeys(r["config"] for r in rows))
    for k, config in enumerate(configs):
        mine = [r for r in rows if r["config"] == config]
        dodge = 0.04 * (k - (len(configs) - 1) / 2)  # side by side, so the intervals stay apart
        xs = [models.index(r["model"]) + dodge for r in mine]
        ys = [100 * r["accuracy"] for r in mine]
        errors = [
            [y - 100 * r["ci"][0] for y, r in zip(ys, mine)],
            [100 * r["ci"][1] - y for y, r in zip(ys, mine)],
        ]
        ax.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=config)
    ax.set_xticks(range(len(models)), models)
    ax.set(
        xlabel="model size", ylabel="accuracy % (95% Wilson CI)", title=f"{task}: accuracy against model size"
    )
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_named(text: str) -> dict[str, Path]:
    named = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        name, sep, folder = item.partition("=")
        if not sep:
            raise SystemExit(f"error: expected NAME=FOLDER, not {item!r}")
        named[name] = Path(folder)
    return named


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--models", help="NAME=FOLDER,NAME=FOLDER: quality folders of two (or more) models")
    group.add_argument("--pairs", help="NAME=FOLDER,NAME=FOLDER: two runs that should agree")
    group.add_argument("--quick", action="store_true", help="run a small grid on both embedded models first")
    parser.add_argument("--tasks", default="gsm8k")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS)
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scale"))
    args = parser.parse_args(argv)
    if args.quick:
        args.configs, args.limit, args.tasks = QUICK_CONFIGS, 8, "gsm8k"
        if args.out == parser.get_default("out"):
            args.out = Path("benchmarks/results/scale-quick")
        folders = {name: args.out / name for name in QUICK_MODELS}
        for name, model in QUICK_MODELS.items():
            code = quality.main(
                [
                    "--quick",
                    "--model",
                    model,
                    "--dtype",
                    "auto",
                    "--configs",
                    args.configs,
                    "--out",
                    str(folders[name]),
                ]
            )
            if code:
                return code
        args.models = ",".join(f"{name}={folder}" for name, folder in folders.items())
    configs = split_configs(args.configs)
    texts, payload, twins = [], {}, {}
    for task in filter(None, (t.strip() for t in args.tasks.split(","))):
        if args.models:
            text, rows, twins[task] = scale_table(parse_named(args.models), task, configs, args.limit)
            if rows:
                args.out.mkdir(parents=True, exist_ok=True)
                plot(rows, args.out / f"scale-{task}.png", task)
        else:
            named = parse_named(args.pairs)
            if len(named) != 2:
                raise SystemExit("error: --pairs takes exactly two runs")
            text, rows = pairs_table(named, task, configs, args.limit)
        texts.append(text)
        payload[task] = rows
    if args.models:
        texts.append(target_summary(payload))
        payload["text twins"] = twins
    print("\n\n".join(texts))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "scale" if args.models else "pairs"
    (args.out / f"{stem}.md").write_text("\n\n".join(texts) + "\n")
    (args.out / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {args.out}/{stem}.md and {stem}.json")
    return 0


if __name__ == "__main__":
    run_script(main)
