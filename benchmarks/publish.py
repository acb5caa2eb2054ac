"""Write the numbers the README and the docs print, from the stored results.

Every table of results in README.md, docs/quality.md, docs/trained.md and docs/efficiency.md
(its team-size section) sits between the markers
`<!-- generated: NAME -->` and `<!-- end generated: NAME -->`; this script rewrites what is
between them, from benchmarks/results and benchmarks/declared.yaml, so no figure is typed by
hand and none goes stale. `--check` rewrites nothing: it says which block differs from what
the results give now, and exits 1 (a default-suite test runs it).

    python benchmarks/publish.py            # rewrite the generated blocks
    python benchmarks/publish.py --check    # are they current?
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import declared  # noqa: E402
import scale  # noqa: E402
import team_size  # noqa: E402
from quality import config_from_folder, folder_name, hit_limit  # noqa: E402

from latentmas.errors import LatentMASError, run_script  # noqa: E402
from latentmas.evaluation.evaluate import Summary, read_results, summarize  # noqa: E402
from latentmas.evaluation.records import read_environments  # noqa: E402
from latentmas.evaluation.stats import compare_paired, wilson_interval  # noqa: E402
from latentmas.evaluation.tasks import get_task  # noqa: E402

ROOT = declared.ROOT
MODELS = {"0.5B": "benchmarks/results/quality-0.5b-bf16", "1.5B": "benchmarks/results/quality-1.5b"}
TASKS = {"gsm8k": ("GSM8K", "gsm8k_reported"), "humaneval": ("HumanEval", "humaneval_all")}
LABELS = {
    "single": "single agent",
    "text_mas": "TextMAS",
    "latent_mas": "the paper's handoff (m = 10, ridge)",
    "latent_mas[m=0]": "the team without thoughts (m = 0)",
    "latent_mas[relay=0.3]": "layer-selective relay (`--relay-layers 0.3`)",
    "latent_mas[keep=0.9]": "relay filter (`--relay-keep 0.9`)",
    "latent_mas[H=3.51,dH=1.6]": "entropy guard (`--max-thought-entropy 3.51 --max-entropy-jump 1.6`)",
    "latent_mas[handoff=states]": "text-anchored states (`--handoff states`)",
    "latent_mas[from=0.5,enter=true,realign=none]": "re-entry at half depth (`--handoff reentry`)",
    "text_mas[msg=64]": "TextMAS with 64-token messages",
}
SCALE_CONFIGS = (
    "single,text_mas,text_mas[msg=64],latent_mas[m=0],latent_mas,latent_mas[m=1],latent_mas[realign=none],"
    "latent_mas[handoff=states],latent_mas[from=0.5,enter=true,realign=none],latent_mas[relay=0.3],"
    "latent_mas[keep=0.9],latent_mas[H=3.51,dH=1.6]"
)
MARKER = re.compile(r"(<!-- generated: (\S+) -->\n)(.*?)(<!-- end generated: \2 -->)", re.S)


def answers(results: str, task: str, config: str, split: dict) -> dict:
    path = ROOT / results / task / folder_name(config, 0, False) / "results.jsonl"
    return {r.id: r for r in read_results(path) if declared.in_split(split, r.id)}


def accuracy_cell(rows: dict) -> str:
    if not rows:
        return "—"
    k, n = sum(r.correct for r in rows.values()), len(rows)
    low, high = wilson_interval(k, n)
    return f"{100 * k / n:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"


def exploratory(mine: dict, theirs: dict) -> str:
    shared = {i: mine[i].correct for i in mine if i in theirs}
    if not shared:
        return "—"
    test = compare_paired(shared, {i: theirs[i].correct for i in shared})
    low, high = test.interval
    return (
        f"{100 * test.difference:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] "
        f"({test.only_a}/{test.only_b}; p {declared.p_text(test.p_value)}) *exploratory*"
    )


def readme_results(comparisons: list) -> str:
    """README's tables: accuracy of the baselines and the paper's handoff; the declared
    comparisons with their verdicts; the undeclared ones, labelled exploratory."""
    splits = declared.load()["splits"]
    base = ["single", "text_mas", "latent_mas", "latent_mas[m=0]"]
    lines = [
        "| model, task (questions) | " + " | ".join(LABELS[c] for c in base) + " |",
        "|---|---|---|---|---|",
    ]
    explored = []
    for model, results in MODELS.items():
        for task, (task_name, split_name) in TASKS.items():
            split = splits[split_name]
            rows = {c: answers(results, task, c, split) for c in base}
            n = max(len(r) for r in rows.values())
            tokens = {c: sum(a.output_tokens for a in r.values()) / len(r) for c, r in rows.items() if r}
            cells = [f"{accuracy_cell(rows[c])}, {tokens[c]:.0f} tok/q" if rows[c] else "—" for c in base]
            lines.append(f"| {model}, {task_name} ({n}) | " + " | ".join(cells) + " |")
            explored.append(
                f"| {model}, {task_name} | {exploratory(rows['latent_mas'], rows['single'])} | "
                f"{exploratory(rows['latent_mas'], rows['latent_mas[m=0]'])} | "
                f"{exploratory(rows['text_mas'], rows['single'])} |"
            )
    lines += [
        "",
        "Declared comparisons ([benchmarks/declared.yaml](benchmarks/declared.yaml)): each handoff chosen on",
        "the tuning split against the single agent and against m = 0, difference in points [95% CI],",
        "discordant questions (handoff/baseline), exact McNemar p and Holm within its family:",
        "",
        "| model, task | handoff | accuracy | vs single agent | vs m = 0 |",
        "|---|---|---|---|---|",
    ]
    for model, results in MODELS.items():
        for task, (task_name, _) in TASKS.items():
            chosen = [
                c for c in comparisons if c.results == results and c.task == task and c.baseline == "single"
            ]
            for c in chosen:
                m0 = declared.find(comparisons, results, task, c.config, "latent_mas[m=0]")
                lines.append(
                    f"| {model}, {task_name} | {LABELS.get(c.config, c.config)} | {100 * c.accuracy:.1f}% | "
                    f"{declared.described(c)} | {'—' if m0 is None else declared.described(m0)} |"
                )
    lines += [
        "",
        "Not declared before their runs, so *exploratory* (raw p, no verdict): the paper's handoff",
        "against the single agent and against m = 0, and TextMAS against the single agent:",
        "",
        "| model, task | paper's handoff vs single | paper's handoff vs m = 0 | TextMAS vs single |",
        "|---|---|---|---|",
        *explored,
    ]
    return "\n".join(lines)


BFLOAT16 = {  # the same configurations in float32 and in bfloat16 (exploratory)
    "bfloat16-0.5b": ("benchmarks/results/quality", "benchmarks/results/quality-0.5b-bf16"),
    "bfloat16-1.5b": ("benchmarks/results/quality-1.5b-fp32", "benchmarks/results/quality-1.5b"),
}
BUDGET = ("single", "latent_mas[m=0]", "latent_mas[from=0.5,enter=true,realign=none]", "text_mas")
BUDGETS = {384: "benchmarks/results/quality-1.5b", 1024: "benchmarks/results/quality-1.5b-1024"}
SHORT_NAMES = dict(zip(BUDGET, ("single", "m = 0", "re-entry", "TextMAS")))


def any_message_cut_off(row, budget: int) -> bool:
    """Whether some agent, the answering one or one before it, spent its whole token budget:
    TextMAS's handoff is its earlier agents' messages, so theirs running out counts too."""
    return hit_limit(row, budget) or any(a.output_tokens >= budget for a in row.agents)


def budget_blocks(comparisons: list) -> tuple[str, str]:
    """1.5B HumanEval at 384 and 1024 new tokens: accuracy and how often the answering agent
    (or any agent) ran out of tokens, per configuration; each configuration's answers at both
    budgets on the same questions, with what became of those cut off; and every comparison
    declared at 1024 beside the same pair at 384, so a changed verdict shows in one row.
    Returns README's line and docs/quality.md's tables."""
    split = declared.load()["splits"]["humaneval_all"]
    runs = {
        config: {b: answers(r, "humaneval", config, split) for b, r in BUDGETS.items()} for config in BUDGET
    }
    lines = [
        "| config | tokens | n | accuracy % [95% CI] | answering agent cut off % "
        "| any agent's message cut off % | decoded tokens/q |",
        "|---|---|---|---|---|---|---|",
    ]
    cut_off = {budget: {} for budget in BUDGETS}  # config -> % cut off: (answers, any message)
    for config in BUDGET:
        for budget, rows in runs[config].items():
            if not rows:
                lines.append(f"| {config} | {budget} | 0 | not run yet | — | — | — |")
                continue
            answer_pct, any_pct = (
                100 * sum(cut(r, budget) for r in rows.values()) / len(rows)
                for cut in (hit_limit, any_message_cut_off)
            )
            complete = len(rows) == 164
            cut_off[budget][config] = (
                (f"{answer_pct:.0f}%", f"{any_pct:.0f}%") if complete else ("running",) * 2
            )
            tokens = sum(r.output_tokens for r in rows.values()) / len(rows)
            running = "" if complete else " (running)"
            lines.append(
                f"| {config} | {budget} | {len(rows)}{running} | {accuracy_cell(rows)} | "
                f"{answer_pct:.0f} | {any_pct:.0f} | {tokens:.0f} |"
            )
    short, long = BUDGETS
    lines += [
        "",
        f"Each configuration at {long} against {short} tokens, on the questions run at both "
        f"(difference {long} − {short} in points [95% CI], right only at {long}/only at {short}; "
        "no budget comparison was declared; the last column follows the answers cut off at "
        f"{short}: how many, and how many of them were right at {short} and at {long}):",
        "",
        f"| config | n | {short} tokens % | {long} tokens % | difference | same final text "
        f"| cut off at {short}: right at {short} / at {long} |",
        "|---|---|---|---|---|---|---|",
    ]
    for config in BUDGET:
        before, after = runs[config][short], runs[config][long]
        shared = [i for i in after if i in before]
        if not shared:
            lines.append(f"| {config} | 0 | — | — | not run yet | — | — |")
            continue
        same = sum(before[i].final_text == after[i].final_text for i in shared)
        cut = [i for i in shared if hit_limit(before[i], short)]
        lines.append(
            f"| {config} | {len(shared)} | {100 * sum(before[i].correct for i in shared) / len(shared):.1f} | "
            f"{100 * sum(after[i].correct for i in shared) / len(shared):.1f} | "
            f"{exploratory(after, before)} | {same}/{len(shared)} | "
            f"{len(cut)}: {sum(before[i].correct for i in cut)} / {sum(after[i].correct for i in cut)} |"
        )
    lines += [
        "",
        f"The comparisons declared at {long} tokens, and the same pairs at {short} (declared there "
        "or *exploratory*):",
        "",
        f"| config | baseline | at {short} tokens | at {long} tokens |",
        "|---|---|---|---|",
    ]
    changes = []  # pairs declared at both budgets: (pair, verdict at short, verdict at long)
    at_long = []  # each pair declared at the long budget, with its verdict there
    for family in declared.load()["families"]:
        if family["results"] != BUDGETS[long]:
            continue
        for config in family["configs"]:
            base = family["baseline"]
            before = declared.find(comparisons, BUDGETS[short], "humaneval", config, base)
            after = declared.find(comparisons, BUDGETS[long], "humaneval", config, base)
            before_cell = (
                declared.described(before) if before else exploratory(runs[config][short], runs[base][short])
            )
            after_cell = declared.described(after) if after else "not run yet"
            lines.append(f"| {config} | {base} | {before_cell} | {after_cell} |")
            if after:
                running = "" if after.complete else ", running"
                at_long.append(f"{SHORT_NAMES[config]} vs {SHORT_NAMES[base]} {after.verdict}{running}")
            if before and after and before.complete and after.complete:
                changes.append((f"{config} vs {base}", before.verdict, after.verdict))
    changed = [f"{pair} ({was} → {now})" for pair, was, now in changes if was != now]
    verdicts = (
        f"Of the pairs declared at both budgets with every answer in ({len(changes)}), the verdict "
        f"changes with the budget for {'; '.join(changed) if changed else 'none'}"
    )
    lines += ["", verdicts + "."]
    rates = {b: " / ".join(cut_off[b].get(c, ("not run",))[0] for c in BUDGET) for b in BUDGETS}
    any_rates = " / ".join(cut_off[short].get(c, ("not run",) * 2)[1] for c in BUDGET)
    readme = (
        f"**The token budget** (1.5B HumanEval, 164 problems): the answering agent is cut off on "
        f"{rates[short]} of answers at {short} new tokens and on {rates[long]} at {long} "
        f"({' / '.join(SHORT_NAMES[c] for c in BUDGET)}); counting every agent's message, "
        f"on {any_rates} of questions at {short}. Declared at {long}: "
        f"{'; '.join(at_long)}. {verdicts} "
        "([tables](docs/quality.md#the-token-budget))."
    )
    return readme, "\n".join(lines)


def quality_blocks(comparisons: list) -> dict[str, str]:
    configs = scale.split_configs(SCALE_CONFIGS)
    models = {name: ROOT / folder for name, folder in MODELS.items()}
    blocks = {"declared": declared.table(comparisons)}
    for task, limit in (("gsm8k", 200), ("humaneval", 164)):
        text, _, _ = scale.scale_table(models, task, configs, limit)
        blocks[f"scale-{task}"] = text.replace(str(ROOT) + "/", "")
    for name, (fp32, bf16) in BFLOAT16.items():
        runs = {"float32": ROOT / fp32, "bfloat16": ROOT / bf16}
        text, _ = scale.pairs_table(runs, "gsm8k", ["single", "latent_mas"], 200)
        blocks[name] = text.replace("p |", "p (exploratory) |", 1)
    return blocks


RESULTS = ROOT / "benchmarks" / "results"
INDEX = RESULTS / "README.md"
SCRIPTS = {  # outputs that are no run folder: the script that writes each (by name prefix)
    "batch_size": "benchmarks/experiments/batch_size.py",
    "efficiency": "benchmarks/efficiency.py",
    "engine-agreement": "benchmarks/engine_agreement.py",
    "cpu-agreement": "benchmarks/engine_agreement.py",
    "entropy_guard_fit": "benchmarks/experiments/entropy_guard_fit.py",
    "realign_conditioning": "benchmarks/experiments/realign_conditioning.py",
    "relay_layers": "benchmarks/experiments/relay_layers.py",
    "scale": "benchmarks/scale.py",
    "team_size": "benchmarks/team_size.py",
    "same-answers": "benchmarks/same_answers.py",
    "trained-lens": "benchmarks/experiments/trained_lens.py",
    "experiment-answer-before-end": "benchmarks/experiments/answer_before_end_of_turn.py",
}


def stored() -> list[Path]:
    """The files of benchmarks/results that git holds (what a clone has)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "benchmarks/results"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        listed = [str(p.relative_to(ROOT)) for p in RESULTS.rglob("*") if p.is_file()]
    return [ROOT / name for name in listed]


def run_folders() -> list[Path]:
    return sorted({p.parent for p in stored() if p.name == "results.jsonl"})


def rebuilt_summary(folder: Path) -> Summary | None:
    """What the folder's summary.json should say, from its answers and run.json."""
    record, summary = folder / "run.json", folder / "summary.json"
    if not record.is_file() or not summary.is_file():
        return None
    old = json.loads(summary.read_text())
    return summarize(
        read_results(folder / "results.jsonl"),
        old["method"],
        json.loads(record.read_text()),
        old["batch_size"],
    )


def summary_current(folder: Path) -> bool | None:
    """Do the figures of summary.json match the answers beside it? (None: no summary)"""
    rebuilt = rebuilt_summary(folder)
    if rebuilt is None:
        return None
    old = json.loads((folder / "summary.json").read_text())
    figures = ("n", "accuracy", "output_tokens_mean", "input_tokens_mean", "latent_steps_mean", "by_group")
    return all(old.get(k, {} if k == "by_group" else None) == getattr(rebuilt, k) for k in figures)


def invocation_range(folder: Path) -> list[int]:
    """The widest range of questions a configuration of this invocation finished (they share
    --limit and --offset): what a run still in progress was started on, since its own ids
    so far come in batches of similar length, not in order."""
    ranges = []
    for sibling in folder.parent.iterdir():
        indices = sorted(declared.split_index(r.id) for r in read_results(sibling / "results.jsonl"))
        if indices and indices[-1] - indices[0] + 1 == len(indices):
            ranges.append(indices)
    return max(ranges, key=len, default=[])


def how_run(folder: Path, record: dict, ids: list[str]) -> str:
    """The command that wrote a run folder: quality.py's for <out>/<task>/<config>, else
    `latentmas eval`'s (each resumes where it stopped)."""
    data = record.get("data", "default")
    file = "" if data in ("default", "hub") else f" {data.split()[0]}"
    tokens, dtype, model = record.get("max_new_tokens"), record.get("dtype", "float32"), record.get("model")
    try:
        get_task(folder.parent.name)
        config, seed = config_from_folder(folder.name)
    except LatentMASError:
        method = record.get("method", folder.name)
        source = f" --data{file}" if file else ""
        return (
            f"`latentmas eval --model {model} --dtype {dtype} --task {record.get('task')}{source} --method {method} "
            f"--limit {len(ids)} --max-new-tokens {tokens} --out {folder.parent.relative_to(ROOT)}`"
        )
    indices = sorted(declared.split_index(i) for i in ids)
    if not indices or indices[-1] - indices[0] + 1 != len(indices):  # a run in progress
        indices = invocation_range(folder) or indices
    offset = f" --offset {indices[0]}" if indices and indices[0] > 0 else ""
    source = f" --gsm8k-file{file}" if file else ""
    seeds = "" if seed is None else f" --seeds {seed} --temperature {record.get('temperature')}"
    return (
        f"`quality.py --model {model} --dtype {dtype} --tasks {folder.parent.name} --limit {len(indices)}{offset} "
        f'--max-new-tokens {tokens}{seeds}{source} --configs "{config}" --out {folder.parent.parent.relative_to(ROOT)}`'
    )


def results_index() -> str:
    lines = [
        "# Stored results",
        "",
        "Written by `python benchmarks/publish.py` (do not edit): every run folder git holds under",
        "`benchmarks/results`, what computed it and how to run it again (each resumes), and whether",
        "its summary.json still says what its answers say (`python benchmarks/publish.py",
        '--rebuild-summaries` rewrites the stale ones). CPU "not logged": answers from before the',
        "environment was logged (2026-12-04).",
        "",
        "| folder | model | dtype | CPU | batch | max new tokens | grading rule | n | summary.json | how it was run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for folder in run_folders():
        record_path = folder / "run.json"
        record = json.loads(record_path.read_text()) if record_path.is_file() else {}
        results = read_results(folder / "results.jsonl")
        cpus = sorted({e.get("cpu", "?") for e in read_environments(folder)}) or ["not logged"]
        summary = folder / "summary.json"
        batch = json.loads(summary.read_text()).get("batch_size", "—") if summary.is_file() else "—"
        rules = sorted({r.grading for r in results})
        task = record.get("task")
        try:
            current_rule = get_task(task).grading if task else None
        except LatentMASError:
            current_rule = None
        rule = ", ".join(rules) + (" (current)" if rules == [current_rule] else " (regrade on resume)")
        rule = rule if rules else "—"
        state = {True: "current", False: "**stale**", None: "—"}[summary_current(folder)]
        lines.append(
            f"| {folder.relative_to(RESULTS)} | {record.get('model', '—')} | {record.get('dtype', 'float32')} | "
            f"{' / '.join(scale.short_cpu(c) for c in cpus)} | {batch} | {record.get('max_new_tokens', '—')} | "
            f"{rule} | {len(results)} | {state} | {how_run(folder, record, [r.id for r in results])} |"
        )
    others = sorted(
        {p.relative_to(RESULTS).parts[0] for p in stored()}
        - {f.relative_to(RESULTS).parts[0] for f in run_folders()}
    )
    lines += ["", "Other outputs (tables, plots, micro-benchmarks), and the script that writes each:", ""]
    lines += ["| output | written by |", "|---|---|"]
    for name in others:
        if name == "README.md":
            continue
        script = next((v for k, v in SCRIPTS.items() if name.startswith(k)), "—")
        lines.append(f"| {name} | `{script}` |")
    return "\n".join(lines) + "\n"


def rebuild_summaries() -> list[Path]:
    """Rewrite every stale summary.json from its answers; -> the folders rewritten."""
    rewritten = []
    for folder in run_folders():
        if summary_current(folder) is False:
            summary = rebuilt_summary(folder)
            (folder / "summary.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
            rewritten.append(folder)
    return rewritten


ADAPTERS = RESULTS / "adapters"


def training_seconds(logs: list[Path]) -> float:
    """Seconds of training that count, from `latentmas train-handoff`'s progress logs in order:
    each process up to the step the next one resumed from (its last checkpoint), the last whole."""
    steps = []
    for log in logs:
        lines = re.findall(r"^(\d+)/\d+ loss \S+ \S+ q/s elapsed (\d+)s", log.read_text(), re.M)
        steps.append([(int(step), int(seconds)) for step, seconds in lines])
    total = 0.0
    for segment, following in zip(steps, [*steps[1:], None]):
        resumed_from = following[0][0] - 1 if following else segment[-1][0]
        total += max(seconds for step, seconds in segment if step <= resumed_from)
    return total


def trained_block() -> str:
    """What each trained adapter is and what it cost: from its file, loss log and progress logs."""
    from safetensors import safe_open

    lines = [
        "| adapter | parameters | rank | questions seen | transcripts | training time | mean loss per epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    for file in sorted(ADAPTERS.glob("*/adapter.safetensors")):
        with safe_open(str(file), "pt") as f:
            meta = f.metadata()
            parameters = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
        settings = json.loads(meta["settings"])
        losses = [
            json.loads(line)["loss"] for line in (file.parent / "losses.jsonl").read_text().splitlines()
        ]
        per_epoch = len(losses) // settings["epochs"]
        means = [sum(losses[i : i + per_epoch]) / per_epoch for i in range(0, len(losses), per_epoch)]
        logs = sorted(file.parent.glob("train-*.log"))
        took = f"{training_seconds(logs) / 60:.0f} min" if logs else "not logged"
        lines.append(
            f"| {file.relative_to(ROOT)} | {parameters:,} | {settings['rank']} | {meta['questions_seen']} "
            f"({settings['epochs']} epochs) | {json.loads(meta['transcripts'])} | {took} | "
            f"{' → '.join(f'{m:.3f}' for m in means)} |"
        )
    return "\n".join(lines)


def stored_table(name: str) -> str:
    """A table a benchmark script wrote under benchmarks/results, as it wrote it."""
    path = RESULTS / name
    return path.read_text().rstrip("\n") if path.is_file() else f"Not measured yet ({name})."


TEAM_FIXES = {  # an earlier commit's runs (team_size folder) -> the shape and the fix they precede
    "before-grouped-attention.jsonl": ("chain", "the attention fix", "5af10cf"),
    "before-branches.jsonl": ("hierarchy", "experts working in branches", "17b98ae"),
}


def team_size_blocks() -> tuple[str, str]:
    """README's one line on what a growing team costs, and docs/efficiency.md's tables with
    issue 42's targets checked and each curve before its fix, from benchmarks/team_size.py's
    stored rows."""
    folder = RESULTS / "team_size"
    if not (folder / "team_size.json").is_file():
        return "Not measured yet (`python benchmarks/team_size.py`).", "Not measured yet."
    stored_runs = json.loads((folder / "team_size.json").read_text())
    rows, settings = stored_runs["rows"], stored_runs["settings"]

    def times(method: str, field: str = "seconds_per_question", runs: list = rows, shape: str = "chain"):
        return {r["n"]: r[field] for r in runs if (r["shape"], r["method"], r["batch"]) == (shape, method, 8)}

    def slope(times: dict[int, float]) -> float:
        return team_size.exponent([(n, t) for n, t in times.items() if n >= 4])

    latent, text, compact = (
        times("latent_mas"),
        times("text_mas"),
        times("latent_mas[latent_only]", "peak_rss_mib"),
    )
    if not {4, 16, 32} <= latent.keys() & text.keys() & compact.keys():
        return "Not measured yet at batch 8 and n = 4, 16 and 32.", team_size.tables(rows, 4)
    line = (
        f"**What a team costs as it grows** (a chain of n reviewers, {settings['model']} in "
        f"{settings['dtype']}, batch 8, {settings['questions']} GSM8K questions): from 4 to 32 agents "
        f"latent_mas's time per question grows as n^{slope(latent):.2f}, TextMAS's as n^{slope(text):.2f}; "
        f"at 16 agents latent_mas is {text[16] / latent[16]:.1f}x faster "
        "([plot](benchmarks/results/team_size/team_size.png), [tables](docs/efficiency.md#teams-as-they-grow))."
    )
    checks = [
        ("latent_mas's exponent from n = 4 to 32 at most 1.1", f"{slope(latent):.2f}", slope(latent) <= 1.1),
        ("TextMAS's grows faster", f"{slope(text):.2f}", slope(text) > slope(latent)),
        (
            "latent_mas at least 5x faster than TextMAS at n = 16",
            f"{text[16] / latent[16]:.1f}x",
            text[16] >= 5 * latent[16],
        ),
        (
            "latent_only's peak RSS at n = 32 within 1.5x of n = 4's",
            f"{compact[32]:.0f} / {compact[4]:.0f} MiB = {compact[32] / compact[4]:.2f}x",
            compact[32] <= 1.5 * compact[4],
        ),
    ]
    lines = ["| issue 42's target (chain, batch 8) | measured | met |", "|---|---|---|"]
    lines += [f"| {what} | {value} | {'yes' if ok else '**no**'} |" for what, value, ok in checks]
    for name, (shape, fix, commit) in TEAM_FIXES.items():
        if not (folder / name).is_file():
            continue
        before = [json.loads(line) for line in (folder / name).read_text().splitlines()]
        lines += [
            "",
            f"latent_mas ({shape}, batch 8) before {fix} (benchmarks/results/team_size/{name}, commit "
            f"{commit}) and after, seconds per question (prefill), and TextMAS's over latent_mas's:",
            "",
            "| n | before | after | times faster than TextMAS, before | after |",
            "|---|---|---|---|---|",
        ]
        old, old_prefill, old_text = (
            times("latent_mas", runs=before, shape=shape),
            times("latent_mas", "prefill_s", before, shape),
            times("text_mas", runs=before, shape=shape),
        )
        new, prefill, new_text = (
            times("latent_mas", shape=shape),
            times("latent_mas", "prefill_s", shape=shape),
            times("text_mas", shape=shape),
        )
        lines += [
            f"| {n} | {old[n]:.2f} ({old_prefill[n]:.2f}) | {new[n]:.2f} ({prefill[n]:.2f}) | "
            f"{ratio(old_text, old, n)} | {ratio(new_text, new, n)} |"
            for n in sorted(new)
            if n in old
        ]
        lines.append(f"\nlatent_mas's exponent ({shape}) before: {slope(old):.2f}; after: {slope(new):.2f}.")
    return line, team_size.tables(rows, 4) + "\n\n" + "\n".join(lines)


def ratio(text: dict[int, float], latent: dict[int, float], n: int) -> str:
    return f"{text[n] / latent[n]:.1f}x" if n in text and n in latent else "—"


def generated(comparisons: list) -> dict[Path, dict[str, str]]:
    line, tables = team_size_blocks()
    budget_line, budget_tables = budget_blocks(comparisons)
    return {
        ROOT / "README.md": {
            "results": readme_results(comparisons),
            "token-budget": budget_line,
            "team-size": line,
        },
        ROOT / "docs" / "quality.md": {**quality_blocks(comparisons), "token-budget": budget_tables},
        ROOT / "docs" / "trained.md": {
            "trained": trained_block(),
            "trained-lens": stored_table("trained-lens-0.5b/trained-lens.md"),
        },
        ROOT / "docs" / "efficiency.md": {"team-size": tables},
    }


def rewrite(text: str, blocks: dict[str, str], where: Path) -> str:
    seen = set()

    def replace(match: re.Match) -> str:
        name = match.group(2)
        if name not in blocks:
            raise LatentMASError(f"{where}: no generator for the block {name!r}")
        seen.add(name)
        return match.group(1) + blocks[name].rstrip("\n") + "\n" + match.group(4)

    text = MARKER.sub(replace, text)
    missing = set(blocks) - seen
    if missing:
        raise LatentMASError(f"{where}: the markers of {', '.join(sorted(missing))} are missing")
    return text


def stale() -> list[str]:
    """A unified diff per file whose generated blocks differ from what the results give (the
    results index is generated whole)."""
    diffs = []
    index = results_index()
    old_index = INDEX.read_text(encoding="utf-8") if INDEX.is_file() else ""
    if index != old_index:
        name = str(INDEX.relative_to(ROOT))
        diffs.append(
            "\n".join(
                difflib.unified_diff(old_index.splitlines(), index.splitlines(), name, name, lineterm="")
            )
        )
    for path, blocks in generated(declared.all_comparisons()).items():
        old = path.read_text(encoding="utf-8")
        new = rewrite(old, blocks, path)
        if new != old:
            name = str(path.relative_to(ROOT))
            diff = difflib.unified_diff(
                old.splitlines(), new.splitlines(), name, f"{name} (from the results)", lineterm=""
            )
            diffs.append("\n".join(diff))
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="rewrite nothing; exit 1 if a block is stale")
    parser.add_argument(
        "--rebuild-summaries",
        action="store_true",
        help="first rewrite every stale summary.json from its answers",
    )
    args = parser.parse_args(argv)
    if args.rebuild_summaries:
        for folder in rebuild_summaries():
            print(f"rebuilt {folder.relative_to(ROOT)}/summary.json")
    if args.check:
        diffs = stale()
        print("\n\n".join(diffs) if diffs else "every generated block is current")
        return 1 if diffs else 0
    for path, blocks in generated(declared.all_comparisons()).items():
        path.write_text(rewrite(path.read_text(encoding="utf-8"), blocks, path), encoding="utf-8")
        print(f"rewrote {len(blocks)} block(s) in {path.relative_to(ROOT)}")
    INDEX.write_text(results_index(), encoding="utf-8")
    print(f"rewrote {INDEX.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    run_script(main)
