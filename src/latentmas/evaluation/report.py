"""Turn a folder of eval runs into report.md and plots.

`latentmas eval --task T1,T2 --method all --out DIR` writes DIR/<task>/<method>/summary.json;
`latentmas report DIR` reads every summary.json below DIR.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import torch
import transformers

from ..errors import LatentMASError
from .evaluate import QuestionResult, Summary, read_results

METHOD_ORDER = ["single", "text_mas", "latent_mas"]


@dataclass
class Run:
    """One eval run: its summary and its answers by question id (results.jsonl beside it)."""

    summary: Summary
    answers: dict[str, QuestionResult]


def read_runs(root: Path) -> list[Run]:
    """Every eval run below `root`, read back into the dataclasses `evaluate` wrote."""
    if not root.is_dir():
        raise LatentMASError(f"not a folder: {root}")
    runs = []
    for path in sorted(root.rglob("summary.json")):
        try:
            summary = Summary(**json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError) as exc:
            raise LatentMASError(f"{path} is not a latentmas summary ({exc})") from exc
        answers = {r.id: r for r in read_results(path.with_name("results.jsonl"))}
        runs.append(Run(summary, answers))
    if not runs:
        raise LatentMASError(f"no summary.json below {root}; run `latentmas eval --out {root}` first")
    return runs


def _order(run: Run) -> tuple:
    method = run.summary.method
    return (run.summary.task, METHOD_ORDER.index(method) if method in METHOD_ORDER else 99, method)


_PAIRED_SETTINGS = ("max_new_tokens", "temperature", "top_p", "seed")


def _pair_key(summary: Summary) -> tuple:
    """What a latent_mas run and its text_mas baseline must share to be compared: the task,
    model, sampling, and the team (recorded as `topology` before teams; a hierarchy of
    experts pairs with its text counterpart whether its experts read one another or not)."""
    settings = summary.settings
    team = settings.get("team", settings.get("topology"))
    team = "hierarchical" if team == "hierarchical_chain" else team
    return (summary.task, summary.model, json.dumps(team), *(settings.get(k) for k in _PAIRED_SETTINGS))


def comparison(runs: list[Run]) -> list[dict]:
    """One row per run, with latent_mas's speedup and token reduction over the text_mas run
    of the same task, model and settings, computed on the questions both answered."""
    text = {_pair_key(r.summary): r for r in runs if r.summary.method == "text_mas"}
    rows = []
    for run in sorted(runs, key=_order):
        r = run.summary
        row = {
            "task": r.task,
            "method": r.method,
            "n": r.n,
            "accuracy": r.accuracy,
            "output_tokens_mean": r.output_tokens_mean,
            "seconds": r.seconds_total,
            "paired_n": None,
            "speedup_vs_text_mas": None,
            "token_reduction_vs_text_mas": None,
        }
        base = text.get(_pair_key(r))
        shared = sorted(run.answers.keys() & base.answers.keys()) if base is not None else []
        if r.method == "latent_mas" and shared:
            mine = [run.answers[i] for i in shared]
            theirs = [base.answers[i] for i in shared]
            row["paired_n"] = len(shared)
            seconds = sum(a.seconds for a in mine)
            if seconds > 0:
                row["speedup_vs_text_mas"] = sum(a.seconds for a in theirs) / seconds
            tokens = sum(a.output_tokens for a in theirs)
            if tokens > 0:
                row["token_reduction_vs_text_mas"] = 1 - sum(a.output_tokens for a in mine) / tokens
        rows.append(row)
    return rows


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def plot(runs: list[Summary], out: Path) -> list[Path]:
    """Accuracy against decoded tokens, and seconds per question, per method and task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted(
        {r.method for r in runs}, key=lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else 99
    )
    tasks = sorted({r.task for r in runs})
    markers = "osD^v<>p*h"
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    fig, ax = plt.subplots(figsize=(7, 5))
    for mi, method in enumerate(methods):
        for ti, task in enumerate(tasks):
            for r in (r for r in runs if r.method == method and r.task == task):
                label = f"{method} · {task}"
                ax.scatter(
                    r.output_tokens_mean,
                    r.accuracy * 100,
                    color=colors[mi % len(colors)],
                    marker=markers[ti % len(markers)],
                    s=60,
                    label=label,
                )
    ax.set(xlabel="decoded tokens per question (mean)", ylabel="accuracy (%)", ylim=(-3, 103))
    ax.set_title("Accuracy vs output tokens")
    ax.legend(fontsize=7)
    accuracy_png = out / "accuracy_vs_tokens.png"
    fig.tight_layout()
    fig.savefig(accuracy_png, dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(max(6, len(tasks) * 2), 4.5))
    width = 0.8 / max(1, len(methods))
    for mi, method in enumerate(methods):
        seconds = [
            next((r.seconds_total / max(r.n, 1) for r in runs if r.method == method and r.task == t), 0.0)
            for t in tasks
        ]
        ax.bar(
            [i + mi * width for i in range(len(tasks))],
            seconds,
            width,
            label=method,
            color=colors[mi % len(colors)],
        )
    ax.set_xticks([i + width * (len(methods) - 1) / 2 for i in range(len(tasks))], tasks)
    ax.set(ylabel="seconds per question", title="Time per method")
    ax.legend()
    time_png = out / "time_per_method.png"
    fig.tight_layout()
    fig.savefig(time_png, dpi=120)
    plt.close(fig)
    return [accuracy_png, time_png]


def _per_group(summaries: list[Summary]) -> list[str]:
    """Accuracy per subtask (BBH) and the subtasks' macro average, where a run has subtasks."""
    grouped = [r for r in summaries if r.by_group]
    if not grouped:
        return []
    lines = ["## Per subtask", "", "| task | method | subtask | n | accuracy |", "|---|---|---|---|---|"]
    for r in grouped:
        lines += [
            f"| {r.task} | {r.method} | {g} | {v['n']} | {_cell(v['accuracy'])} |"
            for g, v in r.by_group.items()
        ]
        lines.append(
            f"| {r.task} | {r.method} | **macro average** | {len(r.by_group)} subtasks | {_cell(r.macro_accuracy)} |"
        )
    return [*lines, ""]


def write_report(root: Path) -> Path:
    """Write root/report.md and the plots; return the report's path."""
    runs = read_runs(root)
    rows = comparison(runs)
    summaries = [run.summary for run in sorted(runs, key=_order)]
    images = plot(summaries, root)
    columns = [
        "task",
        "method",
        "n",
        "accuracy",
        "output_tokens_mean",
        "seconds",
        "paired_n",
        "speedup_vs_text_mas",
        "token_reduction_vs_text_mas",
    ]
    lines = [
        "# latentmas evaluation report",
        "",
        f"- models: {', '.join(sorted({r.model for r in summaries}))}",
        f"- latentmas {version('latentmas')}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"Python {platform.python_version()} on {platform.machine()}",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(_cell(row[c]) for c in columns) + " |" for row in rows),
        "",
        "speedup = text_mas seconds / latent_mas seconds; token reduction = 1 - latent_mas / text_mas "
        "decoded tokens; both on the paired_n questions the two runs answered (same task, model and "
        "settings).",
        "",
        *_per_group(summaries),
        "## Settings (sampling, seeds)",
        "",
        *(f"- {r.task} · {r.method}: `{json.dumps(r.settings, sort_keys=True)}`" for r in summaries),
        "",
        *(f"![{p.stem}]({p.name})" for p in images),
        "",
    ]
    report = root / "report.md"
    report.write_text("\n".join(lines))
    return report
