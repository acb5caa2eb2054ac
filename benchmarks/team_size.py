"""What does a team cost as it grows? Time, tokens and memory for teams of n = 2 to 32 agents.

Two shapes: a chain of n generic reviewers (each reads every one before it), and a
hierarchy of n - 1 experts who work alone and a summarizer who reads them all. Three
methods on the same GSM8K questions: text_mas (every message capped at the same
--message-tokens whatever n), latent_mas with m thoughts per agent and the whole shared
memory, and latent_mas keeping only the thoughts (`--memory latent_only`). Batch 1 and 8.

Per run: seconds per question split by phase, decoded tokens, the shared memory's peak
length (columns) and its key/value size, the peak resident memory while the timed run ran
(Linux's peak is reset after loading and warm-up, in a process of its own per run) and how
far it rose above the memory held when the run began, and accuracy (small on a few
questions: it is there so that a fast broken team is not taken for a fast team). Per shape,
method and batch: the exponent of seconds per question against n, fitted on log-log from
n = 4 to 32, and how many times faster than TextMAS it is at each n. Prints markdown, writes
team_size.json, team_size.md and team_size.png; `--before RUNS.jsonl` draws an earlier
commit's runs dashed in the same plot (the curve before a fix).

    python benchmarks/team_size.py --quick      # n = 2, 4, 8; 4 questions; a few minutes
    python benchmarks/team_size.py              # the grid: 0.5B in bfloat16, 8 questions (hours)
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

from latentmas import LatentMAS, Sampling, TextMAS, get_task, load_model
from latentmas.engines import TransformersEngine
from latentmas.engines.protocol import ALL
from latentmas.errors import LatentMASError, run_script
from latentmas.teams import Agent, Team

GSM8K_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"
METHODS = ("text_mas", "latent_mas", "latent_mas[latent_only]")
SHAPES = ("chain", "hierarchy")


def chain(n: int) -> Team:
    """n reviewers in a row: each reads every one before it; the last answers."""
    first = Agent(
        name="reviewer1", instruction="You are reviewer 1. Work on the question step by step, briefly."
    )
    middle = [
        Agent(
            name=f"reviewer{i}",
            instruction=f"You are reviewer {i}. Check the team's work so far, fix any mistake, and state the corrected reasoning briefly.",
        )
        for i in range(2, n)
    ]
    last = Agent(
        name=f"reviewer{n}",
        instruction="You are the final reviewer. Check the team's work, reason step by step, then give the final answer. {answer_format}",
    )
    return Team(name=f"chain{n}", agents=(first, *middle, last) if n > 1 else (last,))


def hierarchy(n: int) -> Team:
    """n - 1 experts who work alone, and a summarizer who reads them all."""
    experts = [
        Agent(
            name=f"expert{i}",
            instruction=f"You are expert {i}. Solve the question on your own, step by step, briefly.",
            reads=(),
        )
        for i in range(1, n)
    ]
    summarizer = Agent(
        name="summarizer",
        instruction="You are the Summarizer. Compare the experts' solutions, settle any disagreement, reason step by step, then give the final answer. {answer_format}",
    )
    return Team(name=f"hierarchy{n}", agents=(*experts, summarizer))


class MeasuredEngine(TransformersEngine):
    """The transformers engine, noting the longest memory any batch reached (columns)."""

    longest = 0

    def prefill(self, memory, prompts, reading=ALL) -> None:
        super().prefill(memory, prompts, reading)
        MeasuredEngine.longest = max(MeasuredEngine.longest, memory.length)

    def append_thoughts(self, memory, vectors, active):
        new = super().append_thoughts(memory, vectors, active)
        MeasuredEngine.longest = max(MeasuredEngine.longest, memory.length)
        return new

    def decode(self, memory, decoding):
        MeasuredEngine.longest = max(MeasuredEngine.longest, memory.length + decoding.sampling.max_new_tokens)
        return super().decode(memory, decoding)


def kv_mib(lm, columns: int, batch: int) -> float:
    """The key/value bytes a memory of `columns` columns holds for `batch` rows."""
    config = lm.model.config.get_text_config()
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    element = lm.model.dtype.itemsize
    return 2 * config.num_hidden_layers * heads * head_dim * element * columns * batch / 2**20


def resident_mib(field: str) -> float | None:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, from Linux's /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak() -> None:
    """Start Linux's peak-RSS count afresh, so that loading the model does not set the peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def one_run(job: dict) -> dict:
    """One (shape, n, method, batch) run, in this process: its row of the table."""
    lm = load_model(job["model"], dtype=job["dtype"])
    task = get_task("gsm8k")
    examples = task.load(job["data"])[: job["questions"]]  # data None: the 20-problem sample
    shape = chain if job["shape"] == "chain" else hierarchy
    sampling = Sampling(max_new_tokens=job["max_new_tokens"])
    engine = MeasuredEngine(lm)

    def method_for(team: Team):
        if job["method"] == "text_mas":
            return TextMAS(engine, sampling, team, message_tokens=job["message_tokens"])
        memory = "latent_only" if job["method"].endswith("[latent_only]") else "full"
        return LatentMAS(engine, sampling, team, latent_steps=job["latent_steps"], memory=memory)

    # Warm-up, not timed: the same method on a team of two, at the run's batch size.
    method_for(shape(2)).solve([e.question for e in examples[: job["batch"]]], task.answer_format)
    method = method_for(shape(job["n"]))
    MeasuredEngine.longest = 0
    reset_peak()
    held = resident_mib("VmRSS")
    answers, start = [], time.perf_counter()
    for i in range(0, len(examples), job["batch"]):
        answers += method.solve([e.question for e in examples[i : i + job["batch"]]], task.answer_format)
    wall = time.perf_counter() - start
    peak = resident_mib("VmHWM")
    n = len(examples)
    phases = {
        phase: sum(getattr(s, f"{phase}_seconds") for a in answers for s in a.agents) / n
        for phase in ("prefill", "latent", "decode")
    }
    return job | {
        "seconds_per_question": wall / n,
        **{f"{phase}_s": value for phase, value in phases.items()},
        "decoded_tokens": sum(a.output_tokens for a in answers) / n,
        "memory_columns": MeasuredEngine.longest,
        "memory_kv_mib": kv_mib(lm, MeasuredEngine.longest, job["batch"]),
        "peak_rss_mib": peak,
        # Linux updates the peak lazily, so a run that freed more than it took reads a few
        # pages below its start: it rose by nothing.
        "peak_added_mib": None if peak is None or held is None else max(0.0, peak - held),
        "accuracy": sum(task.grade(a.final_text, e).correct for a, e in zip(answers, examples)) / n,
    }


def exponent(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of log(seconds) on log(n): time grows as n ** slope."""
    points = [(n, s) for n, s in points if s > 0]
    if len(points) < 2:
        return None
    xs, ys = [math.log(n) for n, _ in points], [math.log(s) for _, s in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def mib(row: dict) -> str:
    """Peak RSS and its rise during the run; rows written before that was measured show "—"."""
    if row.get("peak_added_mib") is None:
        return "—"
    return f"{row['peak_rss_mib']:.0f} (+{row['peak_added_mib']:.0f})"


def tables(rows: list[dict], fit_from: int) -> str:
    lines = [
        "| shape | method | batch | n | s/question | prefill / latent / decode s | decoded tokens/q "
        "| memory columns | memory KV MiB | peak RSS MiB (added) | accuracy |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['method']} | {r['batch']} | {r['n']} | {r['seconds_per_question']:.2f} | "
            f"{r['prefill_s']:.2f} / {r['latent_s']:.2f} / {r['decode_s']:.2f} | {r['decoded_tokens']:.0f} | "
            f"{r['memory_columns']} | {r['memory_kv_mib']:.1f} | {mib(r)} | {100 * r['accuracy']:.0f}% |"
        )
    lines += ["", f"Growth of seconds per question with n (fitted exponent, n >= {fit_from}):", ""]
    lines += [
        "| shape | method | batch | exponent | times faster than TextMAS at n = 2, 4, ... |",
        "|---|---|---|---|---|",
    ]
    for shape, method, batch in sorted({(r["shape"], r["method"], r["batch"]) for r in rows}):
        mine = sorted(
            (r["n"], r["seconds_per_question"])
            for r in rows
            if (r["shape"], r["method"], r["batch"]) == (shape, method, batch)
        )
        slope = exponent([p for p in mine if p[0] >= fit_from])
        text = {
            r["n"]: r["seconds_per_question"]
            for r in rows
            if (r["shape"], r["method"], r["batch"]) == (shape, "text_mas", batch)
        }
        ratios = [f"{text[n] / seconds:.1f}x" if n in text else "—" for n, seconds in mine]
        ratio = "—" if method == "text_mas" else ", ".join(ratios)
        lines.append(
            f"| {shape} | {method} | {batch} | {'—' if slope is None else f'{slope:.2f}'} | {ratio} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, before: list[dict] = ()) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["batch"], r["shape"]) for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (batch, shape) in zip(axes[0], panels):
        for color, method in enumerate(METHODS):
            for runs, style, label in ((rows, "-", method), (before, "--", f"{method}, before")):
                mine = sorted(
                    (r["n"], r["seconds_per_question"])
                    for r in runs
                    if (r["shape"], r["method"], r["batch"]) == (shape, method, batch)
                )
                if mine:
                    ax.plot(*zip(*mine), style, marker="o", color=f"C{color}", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("agents in the team (n)")
        ax.set_ylabel("seconds per question")
        ax.set_title(f"{shape}, batch {batch}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-0.5b")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--data", type=Path, default=GSM8K_FILE if GSM8K_FILE.is_file() else None)
    p.add_argument("--sizes", default="2,4,8,16,32")
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--questions", type=int, default=8)
    p.add_argument("--latent-steps", type=int, default=10)
    p.add_argument("--message-tokens", type=int, default=64, help="every text_mas message's cap, whatever n")
    p.add_argument("--max-new-tokens", type=int, default=128, help="the answering agent's budget")
    p.add_argument("--fit-from", type=int, default=4)
    p.add_argument("--quick", action="store_true", help="n = 2, 4, 8; 4 questions; batch 4")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/team_size"))
    p.add_argument("--before", type=Path, help="an earlier commit's runs.jsonl, drawn dashed")
    p.add_argument("--one", help=argparse.SUPPRESS)  # a job to run in this process (JSON)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one_run(json.loads(args.one))))
        return 0
    if args.quick:
        args.sizes, args.questions, args.batch_sizes = "2,4,8", 4, "4"
    sizes = [int(n) for n in args.sizes.split(",")]
    unknown = set(args.methods.split(",")) - set(METHODS) | set(args.shapes.split(",")) - set(SHAPES)
    if args.before and not args.before.is_file():
        raise LatentMASError(f"--before {args.before}: no such runs file")
    if unknown or min(sizes) < 1:
        raise LatentMASError(f"unknown method or shape {sorted(unknown)}, or a size below 1")
    args.out.mkdir(parents=True, exist_ok=True)
    done_path = args.out / "runs.jsonl"
    done = [json.loads(line) for line in done_path.read_text().splitlines()] if done_path.is_file() else []
    base = {
        "model": args.model,
        "dtype": args.dtype,
        "data": None if args.data is None else str(args.data),
        "questions": args.questions,
        "latent_steps": args.latent_steps,
        "message_tokens": args.message_tokens,
        "max_new_tokens": args.max_new_tokens,
    }
    jobs = [
        base | {"shape": shape, "n": n, "method": method, "batch": int(batch)}
        for batch in args.batch_sizes.split(",")
        for shape in args.shapes.split(",")
        for method in args.methods.split(",")
        for n in sizes
    ]
    keys = ("shape", "n", "method", "batch", *base)
    rows = []
    for index, job in enumerate(jobs, start=1):
        previous = next((r for r in done if all(r.get(k) == job[k] for k in keys)), None)
        if previous is None:  # resumes: a run already in runs.jsonl is not run again
            print(
                f"[{index}/{len(jobs)}] {job['shape']} n={job['n']} {job['method']} batch {job['batch']}",
                flush=True,
            )
            command = [sys.executable, __file__, "--one", json.dumps(job)]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise LatentMASError(f"run {job} failed: {result.stderr.strip().splitlines()[-1]}")
            previous = json.loads(result.stdout.strip().splitlines()[-1])
            with done_path.open("a") as f:
                f.write(json.dumps(previous) + "\n")
        rows.append(previous)
    text = tables(rows, args.fit_from)
    print(text)
    (args.out / "team_size.md").write_text(text + "\n")
    (args.out / "team_size.json").write_text(json.dumps({"settings": base, "rows": rows}, indent=1) + "\n")
    before = [json.loads(line) for line in args.before.read_text().splitlines()] if args.before else []
    plot(rows, args.out / "team_size.png", before)
    print(f"\nwrote team_size.md, team_size.json and team_size.png in {args.out}")
    return 0


if __name__ == "__main__":
    run_script(main)
