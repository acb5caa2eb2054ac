"""Does latent collaboration keep its accuracy? A paired comparison on the same questions.

Same model, same questions, same prompts, greedy by default. Methods: `single`, `text_mas`,
and `latent_mas` varied one factor at a time around its default (latent steps, realignment,
memory, topology). Per configuration: accuracy with a 95% Wilson interval; the paired
difference against `single` and against `text_mas` with an exact McNemar p-value; decoded
tokens and seconds per question. Prints a markdown table, writes quality.json,
quality.md and quality.png (accuracy against decoded tokens) under `<out>/<task>/`: every
configuration in that folder is in them, not only the ones this command ran, so a run of
one task or a few configurations leaves the others' rows in place.

Each configuration runs through `latentmas.evaluation.evaluate` into `<out>/<task>/<config>/`, so an
interrupted run resumes where it stopped (rerun the same command).

    python benchmarks/quality.py --quick                       # < 10 min on 2 CPU cores
    python benchmarks/quality.py --limit 200 --configs single,text_mas,latent_mas
    python benchmarks/quality.py --temperature 0.6 --top-p 0.95 --seeds 0,1,2   # sampled pass
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
import typing
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from latentmas import RunSpec, Sampling, build_solver, evaluate, get_task, load_model
from latentmas.errors import LatentMASError, run_script
from latentmas.evaluation.evaluate import read_results, regrade
from latentmas.evaluation.graders import last_boxed
from latentmas.evaluation.records import read_environments
from latentmas.evaluation.stats import compare_over_seeds, compare_paired, wilson_interval
from latentmas.evaluation.tasks.code import closed_code_blocks
from latentmas.methods import METHODS
from latentmas.models import DTYPES
from latentmas.spec import LEGACY_FLAGS, flat_option_fields

GSM8K_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"

# The one-factor-at-a-time variations around latent_mas's default.
VARIATIONS = {
    "latent_steps": ["0", "5", "20", "auto"],
    "realign": ["norm", "none"],
    "memory": ["latent_only"],
    "topology": ["hierarchical"],
    "question_once": ["true"],
}
SHORT = {
    "latent_steps": "m",
    "realign": "realign",
    "memory": "memory",
    "topology": "topology",
    "team": "team",
    "adapter": "adapter",
    "question_once": "once",
    "thought_weight": "beta",
    "thoughts_from": "from",
    "thoughts_enter": "enter",
    "relay_layers": "relay",
    "relay_keep": "keep",
    "max_thought_entropy": "H",
    "max_entropy_jump": "dH",
    "handoff": "handoff",
    "message_tokens": "msg",
}


M0 = "latent_mas[m=0]"  # the team in one shared cache without thoughts: what thoughts must beat


def all_configs() -> list[str]:
    """The default grid: baselines, latent_mas's default, and one change at a time around it."""
    names = ["single", "text_mas", "latent_mas"]
    for factor, values in VARIATIONS.items():
        names += [f"latent_mas[{SHORT[factor]}={value}]" for value in values]
    return names


def settable() -> set[str]:
    """The options a config name may set: RunSpec's fields and every handoff option (the
    spec is the one source of their names, types, bounds and choices)."""
    run_level = {
        "model",
        "dtype",
        "device",
        "engine",
        "trace",
        "max_new_tokens",
        "temperature",
        "top_p",
        "seed",
    }
    return (set(RunSpec.model_fields) - run_level) | set(flat_option_fields()) | set(LEGACY_FLAGS)


def parse_config(name: str) -> dict:
    """'latent_mas[m=3,realign=soft]' -> {method, options}: the changes to the method's defaults
    (RunSpec's), as text; `config_spec` turns them into a validated spec.

    Any name of this form works, not only the default grid, so a new variation needs no code.
    """
    method, _, changes = name.partition("[")
    if method not in METHODS or (changes and not changes.endswith("]")):
        raise LatentMASError(f"config {name!r}: expected single, text_mas or latent_mas[key=value,...]")
    long_names = {short: factor for factor, short in SHORT.items()}
    options = {}
    for item in filter(None, changes.rstrip("]").split(",")):
        key, sep, value = item.partition("=")
        key = long_names.get(key.strip(), key.strip())
        if not sep or key not in settable():
            raise LatentMASError(
                f"config {name!r}: cannot set {item!r} (settable: {', '.join(sorted(settable()))})"
            )
        options[key] = value.strip()
    return {"method": method, "options": options}


def config_spec(config: dict, model: str, dtype: str, sampling: Sampling) -> RunSpec:
    """The run a config describes ("none" is no value where an option can have none, as
    `H=none`; `realign=none` is the mode). RunSpec parses the rest."""
    fields = RunSpec.model_fields | flat_option_fields()

    def value(key: str, text: str):
        optional = key in fields and type(None) in typing.get_args(fields[key].annotation)
        return None if text == "none" and optional else text

    options = {key: value(key, text) for key, text in config["options"].items()}
    return RunSpec(model=model, dtype=dtype, method=config["method"], **options, **asdict(sampling))


@dataclass
class Endings:
    """How the final answers end: where a method loses, this says whether it lost the format or the maths."""

    # the final text holds an answer: a closed boxed answer (maths), a closed code block with a def (code)
    answered: int
    correct_when_answered: int
    hit_limit: int  # the final agent's decoding stopped at max_new_tokens
    stopped_unanswered: int  # the model ended its turn before giving an answer
    repetitive: int  # some line repeats at least REPEATS times: a decoding loop
    wrote_refiners_plan: int  # the Solver presents the Refiner's plan: an earlier role taken over


REPEATS = 4
# The Refiner's task in the sequential roles (prompts/roles.yaml) is "an improved plan". The
# Solver may *follow* "the refined plan"; presenting one is the Refiner's job, not its own.
REFINERS_PLAN = re.compile(
    r"\bimproved plan\b|\b(here'?s|here is|below is) (the|an|my) (refined|revised|updated) plan\b",
    re.IGNORECASE,
)


def gave_answer(kind: str, text: str) -> bool:
    """A closed \\boxed{...} for maths; for code, a closed code fence (as the grader reads them) defining a function."""
    if kind == "code":
        return any(re.search(r"^\s*def \w+\(", block, re.M) for block in closed_code_blocks(text))
    return last_boxed(text) is not None


def hit_limit(result, max_new_tokens: int) -> bool:
    """Whether the final agent's decoding stopped at max_new_tokens; its own count decides,
    since text_mas's output_tokens sums every agent's."""
    return (result.agents[-1].output_tokens if result.agents else result.output_tokens) >= max_new_tokens


def endings(results, max_new_tokens: int, kind: str = "math") -> Endings:
    def loops(text: str) -> bool:
        lines = [line.strip() for line in text.splitlines() if len(line.strip()) > 8]
        return any(lines.count(line) >= REPEATS for line in set(lines))

    answered = {r.id for r in results if gave_answer(kind, r.final_text)}
    at_limit = {r.id for r in results if hit_limit(r, max_new_tokens)}
    return Endings(
        answered=len(answered),
        correct_when_answered=sum(r.correct for r in results if r.id in answered),
        hit_limit=len(at_limit),
        stopped_unanswered=len({r.id for r in results} - answered - at_limit),
        repetitive=sum(loops(r.final_text) for r in results),
        wrote_refiners_plan=sum(bool(REFINERS_PLAN.search(r.final_text)) for r in results),
    )


@dataclass
class Row:
    task: str
    config: str
    seed: int
    n: int
    accuracy: float
    ci_low: float
    ci_high: float
    output_tokens_mean: float
    latent_steps_mean: float
    seconds_mean: float
    vs_single: float | None  # accuracy difference on shared questions
    p_vs_single: float | None
    vs_text_mas: float | None
    p_vs_text_mas: float | None
    vs_m0: float | None  # against the team without thoughts, latent_mas[m=0]
    p_vs_m0: float | None
    endings: Endings


def folder_name(config: str, seed: int, sampled: bool) -> str:
    """'latent_mas[from=0.5,enter=true]' -> 'latent_mas-from0.5+entertrue' (no commas: a folder
    name goes into shell commands and comma lists; folders named before with commas are
    renamed, and `config_from_folder` still reads them)."""
    safe = config.replace("[", "-").replace("]", "").replace("=", "").replace(",", "+").replace("/", "~")
    return f"{safe}-seed{seed}" if sampled else safe


def config_from_folder(name: str) -> tuple[str, int | None]:
    """Undo `folder_name`: 'latent_mas-from0.5+entertrue-seed1' -> ('latent_mas[from=0.5,enter=true]', 1)
    (a comma, as folders were named before, separates options too).

    Keys are matched longest first, so 'msg64' is msg=64 and 'm10' is m=10.
    """
    seed = None
    head, sep, tail = name.rpartition("-seed")
    if sep and tail.isdigit():
        name, seed = head, int(tail)
    method, _, changes = name.partition("-")
    if not changes:
        parse_config(method)  # raises for a folder that is no config
        return method, seed
    keys = sorted(SHORT.values(), key=len, reverse=True)
    items = []
    for item in changes.replace("~", "/").replace("+", ",").split(","):
        key = next((k for k in keys if item.startswith(k) and len(item) > len(k)), None)
        if key is None:
            raise LatentMASError(f"folder {name!r}: {item!r} is no config option")
        items.append(f"{key}={item[len(key) :]}")
    return f"{method}[{','.join(items)}]", seed


def configs_in(folder: Path, seed: int, sampled: bool) -> list[str]:
    """Configurations with results under one task folder, for this seed (sampled) or greedy."""
    found = []
    for path in sorted(folder.glob("*/results.jsonl")):
        try:
            config, config_seed = config_from_folder(path.parent.name)
        except LatentMASError:
            continue  # a folder this script did not write
        if (config_seed == seed) if sampled else config_seed is None:
            found.append(config)
    first = ["single", "text_mas", M0, "latent_mas"]  # the baselines, then the variants by name
    return sorted(found, key=lambda c: (first.index(c) if c in first else len(first), c))


def recorded(folder: Path, rows: list[Row], sampled: bool, dtype: str) -> tuple[str, str] | None:
    """The model and dtype the rows' runs recorded (a report of old runs names what ran, not the flags).

    Runs from before dtypes were recorded ran in `dtype`, the script's default then and now.
    """
    seen = set()
    for r in rows:
        run = folder / folder_name(r.config, r.seed, sampled) / "run.json"
        if run.exists():
            info = json.loads(run.read_text())
            seen.add((info.get("model", "?"), info.get("dtype", dtype)))
    if not seen:
        return None
    return " / ".join(sorted({m for m, _ in seen})), " / ".join(sorted({d for _, d in seen}))


def machines(folder: Path, rows: list[Row], sampled: bool) -> str:
    """Which CPUs and libraries computed the rows' answers. bfloat16 products round differently
    on another CPU's kernels, so a run resumed elsewhere is a slightly different run."""
    parts = []
    for r in rows:
        envs = read_environments(folder / folder_name(r.config, r.seed, sampled))
        stretches = [
            f"{e.get('cpu', '?')}, torch {e.get('torch', '?')}, transformers {e.get('transformers', '?')}"
            + (f" (from answer {e['answered_before'] + 1})" if e.get("answered_before") else "")
            for e in envs
        ]
        if stretches:
            parts.append(f"{r.config}: " + "; ".join(stretches))
    if not parts:
        return ""
    return "Computed on (logged since 2026-12-04; earlier answers are not listed):\n\n" + "\n".join(
        f"- {p}" for p in parts
    )


def run_config(
    lm, task, examples, config: dict, sampling: Sampling, folder: Path, batch_size: int, data: str | None
) -> None:
    method = build_solver(config_spec(config, lm.name, lm.dtype, sampling), lm)
    done = {r.id for r in read_results(folder / "results.jsonl")}
    left = [e for e in examples if e.id not in done]
    print(
        f"  {folder.relative_to(folder.parents[1])}: {len(examples) - len(left)} done, {len(left)} to run",
        flush=True,
    )
    if not left:
        return
    began, count = time.perf_counter(), [0]

    def progress(results):
        count[0] += len(results)
        rate = (time.perf_counter() - began) / max(1, count[0] - (len(examples) - len(left)))
        print(f"    {count[0]}/{len(examples)}  ({rate:.1f} s/question)", flush=True)

    evaluate(method, task, examples, folder, batch_size, on_batch=progress, data=data)


def correctness(folder: Path, ids: set[str]) -> dict[str, bool]:
    return {r.id: r.correct for r in read_results(folder / "results.jsonl") if r.id in ids}


def summarize(
    task: str, config: str, seed: int, results: list, baselines: dict, max_new_tokens: int, kind: str = "math"
) -> Row | None:
    """One config's row from its results on the chosen questions."""
    if not results:
        return None
    n = len(results)
    correct = sum(r.correct for r in results)
    low, high = wilson_interval(correct, n)
    mine = {r.id: r.correct for r in results}
    paired = {}
    for name, other in baselines.items():
        if name == config or not other:
            paired[name] = (None, None)
            continue
        cmp = compare_paired(mine, other)
        paired[name] = (cmp.difference, cmp.p_value)
    return Row(
        task=task,
        config=config,
        seed=seed,
        n=n,
        accuracy=correct / n,
        ci_low=low,
        ci_high=high,
        output_tokens_mean=sum(r.output_tokens for r in results) / n,
        latent_steps_mean=sum(r.latent_steps for r in results) / n,
        seconds_mean=sum(r.seconds for r in results) / n,
        vs_single=paired["single"][0],
        p_vs_single=paired["single"][1],
        vs_text_mas=paired["text_mas"][0],
        p_vs_text_mas=paired["text_mas"][1],
        vs_m0=paired[M0][0],
        p_vs_m0=paired[M0][1],
        endings=endings(results, max_new_tokens, kind),
    )


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:+.1f}"


def _p(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def table(title: str, header: list[str], cells: list[list[str]]) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def markdown(rows: list[Row], title: str) -> str:
    header = [
        "config",
        "n",
        "accuracy % [95% CI]",
        "vs single (pts, p)",
        "vs text_mas (pts, p)",
        "vs m = 0 (pts, p)",
    ]
    header += ["decoded tokens/q", "latent steps/q", "s/q"]
    cells = [
        [
            r.config,
            str(r.n),
            f"{100 * r.accuracy:.1f} [{100 * r.ci_low:.1f}, {100 * r.ci_high:.1f}]",
            f"{_signed(r.vs_single)}, {_p(r.p_vs_single)}",
            f"{_signed(r.vs_text_mas)}, {_p(r.p_vs_text_mas)}",
            f"{_signed(r.vs_m0)}, {_p(r.p_vs_m0)}",
            f"{r.output_tokens_mean:.0f}",
            f"{r.latent_steps_mean:.0f}",
            f"{r.seconds_mean:.1f}",
        ]
        for r in rows
    ]
    return table(title, header, cells)


def endings_table(rows: list[Row], title: str, kind: str = "math") -> str:
    """Where answers go wrong: the format (no answer, loops, cut off) or the content (wrong when answered)."""
    answer = "code block with a def" if kind == "code" else "boxed answer"
    header = ["config", "n", f"{answer} %", "correct when given", "hit token limit %"]
    header += ["ended turn unanswered %", "repetitive %", "writes the Refiner's plan %"]
    cells = []
    for r in rows:
        e = r.endings
        share = [
            f"{100 * k / r.n:.0f}"
            for k in (
                e.answered,
                e.hit_limit,
                e.stopped_unanswered,
                e.repetitive,
                e.wrote_refiners_plan,
            )
        ]
        given = e.correct_when_answered
        when = f"{given}/{e.answered} ({100 * given / max(e.answered, 1):.0f}%)"
        cells.append([r.config, str(r.n), share[0], when, *share[1:]])
    return table(title, header, cells)


def seed_spread(rows: list[Row], correct: dict[tuple[str, str, int], dict[str, bool]]) -> str:
    """Sampled pass: mean and spread of accuracy over seeds, and each config against `single`
    pooled over seeds (per question, the share of seeds right; an exact sign test on the
    questions where the shares differ; see `compare_over_seeds`)."""
    by_config: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        by_config.setdefault((r.task, r.config), []).append(r)
    lines = [
        "| task | config | seeds | mean accuracy % | sd | vs single over seeds (pts; questions better/worse; p) |",
        "|---|---|---|---|---|---|",
    ]
    for (task, config), runs in by_config.items():
        accs = [r.accuracy for r in runs]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        baseline = [correct[(task, "single", r.seed)] for r in runs if (task, "single", r.seed) in correct]
        versus = "—"
        if config != "single" and len(baseline) == len(runs):
            cmp = compare_over_seeds([correct[(task, config, r.seed)] for r in runs], baseline)
            versus = f"{100 * cmp.difference:+.1f}; {cmp.only_a}/{cmp.only_b}; {cmp.p_value:.3f}"
        lines.append(
            f"| {task} | {config} | {len(accs)} | {100 * statistics.mean(accs):.1f} | {100 * sd:.1f} | {versus} |"
        )
    return "\n".join(lines)


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r.task for r in rows})
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for r in (r for r in rows if r.task == task):
            colour = {"single": "tab:blue", "text_mas": "tab:orange"}.get(r.config, "tab:green")
            ax.errorbar(
                r.output_tokens_mean,
                100 * r.accuracy,
                yerr=[[max(0.0, 100 * (r.accuracy - r.ci_low))], [max(0.0, 100 * (r.ci_high - r.accuracy))]],
                fmt="o",
                color=colour,
                capsize=3,
            )
            ax.annotate(
                r.config,
                (r.output_tokens_mean, 100 * r.accuracy),
                fontsize=7,
                xytext=(4, 3),
                textcoords="offset points",
            )
        ax.set_xscale("log")
        ax.set_xlabel("decoded tokens per question (log)")
        ax.set_ylabel("accuracy % (95% Wilson CI)")
        ax.set_title(task)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def split_configs(text: str) -> list[str]:
    """Comma list of config names; commas inside [...] belong to the name."""
    names, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            names.append(current.strip())
            current = ""
        else:
            current += char
    names.append(current.strip())
    return [n for n in names if n]


def load_examples(task_name: str, limit: int, offset: int = 0, gsm8k_file: Path = GSM8K_FILE):
    task = get_task(task_name)
    if task_name == "gsm8k":
        examples = task.load(str(gsm8k_file))
    else:
        examples = task.load()
    return task, examples[offset : offset + limit]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=DTYPES,
        help="what the model computes in (float32: the dtype of every committed 0.5B run; a folder "
        "refuses to resume a run of another dtype)",
    )
    parser.add_argument("--tasks", default="gsm8k", help="gsm8k, humaneval, or both (comma list)")
    parser.add_argument("--limit", type=int, default=100, help="first N questions of each task")
    parser.add_argument(
        "--offset",
        type=int,
        default=0,
        help="skip the first K questions (a tuning split apart from the reported one)",
    )
    parser.add_argument("--gsm8k-file", type=Path, default=GSM8K_FILE, help="GSM8K test split (JSONL)")
    parser.add_argument("--configs", default="all", help="comma list of config names (see --list)")
    parser.add_argument("--list", action="store_true", help="print the config names and exit")
    parser.add_argument("--max-new-tokens", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seeds", default="0", help="comma list; several make sense when sampling")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/quality"))
    parser.add_argument("--report-only", action="store_true", help="tabulate what is there, run nothing")
    parser.add_argument("--quick", action="store_true", help="8 GSM8K questions, 3 configs, 192 tokens")
    args = parser.parse_args(argv)

    if args.list:
        print("\n".join(all_configs()))
        return 0
    if args.quick:
        args.limit, args.max_new_tokens = min(args.limit, 8), min(args.max_new_tokens, 192)
        if args.configs == "all":
            args.configs = "single,text_mas,latent_mas"
        if args.out == parser.get_default("out"):
            args.out = Path("benchmarks/results/quality-quick")
    chosen = all_configs() if args.configs == "all" else split_configs(args.configs)
    try:
        configs = {name: parse_config(name) for name in chosen}
    except LatentMASError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.limit < 1 or args.batch_size < 1 or args.max_new_tokens < 1:
        print("error: --limit, --batch-size and --max-new-tokens must be >= 1", file=sys.stderr)
        return 2
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        print(f"error: --seeds takes integers, not {args.seeds!r}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    sampled = args.temperature > 0
    task_names = [t.strip() for t in args.tasks.split(",") if t.strip()]

    try:
        data = {name: load_examples(name, args.limit, args.offset, args.gsm8k_file) for name in task_names}
        for name, (task, examples) in data.items():  # a fixed grader scores every earlier answer again
            for results in sorted((args.out / name).glob("*/results.jsonl")):
                regrade(results.parent, task, examples)
        lm = None if args.report_only else load_model(args.model, dtype=args.dtype)
        for name, (task, examples) in data.items():
            for seed in seeds:
                sampling = Sampling(args.max_new_tokens, args.temperature, args.top_p, seed)
                for config in chosen:
                    if lm is not None:
                        folder = args.out / name / folder_name(config, seed, sampled)
                        source = str(args.gsm8k_file) if name == "gsm8k" else None
                        run_config(
                            lm, task, examples, configs[config], sampling, folder, args.batch_size, source
                        )
    except LatentMASError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished questions are saved (rerun the same command to resume)", file=sys.stderr)
        return 130

    sampling_text = (
        f"temperature {args.temperature}, top-p {args.top_p}, seeds {args.seeds}" if sampled else "greedy"
    )
    reports = []
    for name, (task, examples) in data.items():
        ids = {e.id for e in examples}
        rows: list[Row] = []
        correct: dict[tuple[str, str, int], dict[str, bool]] = {}
        for seed in seeds:
            baselines = {
                b: correctness(args.out / name / folder_name(b, seed, sampled), ids)
                for b in ("single", "text_mas", M0)
            }
            present = configs_in(args.out / name, seed, sampled)
            for config in dict.fromkeys(chosen + present):
                folder = args.out / name / folder_name(config, seed, sampled)
                results = [r for r in read_results(folder / "results.jsonl") if r.id in ids]
                row = summarize(name, config, seed, results, baselines, args.max_new_tokens, task.kind)
                if row is not None:
                    rows.append(row)
                    correct[(name, config, seed)] = {r.id: r.correct for r in results}
        if not rows:
            continue
        split = f"questions {args.offset + 1}–{args.offset + len(examples)}"
        model, dtype = recorded(args.out / name, rows, sampled, parser.get_default("dtype")) or (
            args.model,
            args.dtype,
        )
        title = f"{model} ({dtype}), {split}, {sampling_text}, max {args.max_new_tokens} new tokens per text agent"
        text = "\n\n".join(
            markdown([r for r in rows if r.seed == s], f"{name}, seed {s}: {title}") for s in seeds
        )
        text += "\n\n" + "\n\n".join(
            endings_table(
                [r for r in rows if r.seed == s], f"how the answers end: {name}, seed {s}", task.kind
            )
            for s in seeds
        )
        if sampled and len(seeds) > 1:
            text += "\n\n" + seed_spread(rows, correct)
        if where := machines(args.out / name, rows, sampled):
            text += "\n\n" + where
        print(text)
        folder = args.out / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "quality.md").write_text(text + "\n")
        report = {"model": model, "dtype": dtype, "split": split, "sampling": sampling_text}
        (folder / "quality.json").write_text(
            json.dumps(report | {"rows": [asdict(r) for r in rows]}, indent=2) + "\n"
        )
        plot(rows, folder / "quality.png")
        reports.append(folder)
    if not reports:
        print("no results yet", file=sys.stderr)
        return 1
    print("\nwrote quality.md, quality.json and quality.png in " + ", ".join(map(str, reports)))
    return 0


if __name__ == "__main__":
    run_script(main)
