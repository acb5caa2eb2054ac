"""What does a finished row cost? Rows dropped in place vs transformers' stock row selection.

When a row of a batch emits its stop token, the engine drops its cache rows so it stops
costing compute. transformers' `DynamicLayer.batch_select_indices` copies the kept rows
into new tensors, and our growing cache then copies them again into a new buffer; the
engine's `GrowingLayer` moves the kept rows down inside its buffer instead. This runs the
same questions at one batch size with each, alternated (A B A B, one process), and reports
decode seconds and whether every answer is token-identical. First, a micro-benchmark: a
batch of 8 rows with a long cache drops one row at a time; milliseconds for the drop and
for the step after it, with each selection.

    python benchmarks/experiments/row_compaction.py --model qwen2.5-coder-0.5b --limit 8
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers.cache_utils import DynamicLayer

from latentmas import RunSpec, build_solver, get_task, load_model
from latentmas.engines.cache import GrowingLayer, SharedMemory
from latentmas.engines.forward import append, prefill
from latentmas.errors import run_script

IN_PLACE = GrowingLayer.batch_select_indices


@contextmanager
def row_selection(in_place: bool):
    """Run a block with the engine's in-place row selection or transformers' stock one."""
    GrowingLayer.batch_select_indices = IN_PLACE if in_place else DynamicLayer.batch_select_indices
    try:
        yield
    finally:
        GrowingLayer.batch_select_indices = IN_PLACE


def run(method, questions, task, batch_size: int, in_place: bool) -> tuple[float, float, list]:
    with row_selection(in_place):
        start = time.perf_counter()
        answers = []
        for i in range(0, len(questions), batch_size):
            answers += method.solve([q.question for q in questions[i : i + batch_size]], task.answer_format)
        wall = time.perf_counter() - start
    decode = sum(agent.decode_seconds for a in answers for agent in a.agents)
    return wall, decode, answers


def drops(lm, context: int, in_place: bool) -> list[dict]:
    """Drop the last row of a batch of 8 until one is left; time the drop and the next step."""
    model = lm.model
    memory = SharedMemory.empty(model, 8)

    def step() -> float:
        rows = memory.batch_size
        start = time.perf_counter()
        append(model, memory, torch.ones(rows, 1, dtype=torch.long), input_ids=torch.full((rows, 1), 100))
        return time.perf_counter() - start

    with row_selection(in_place), torch.inference_mode():
        prefill(model, memory, [[100 + (row * 7 + i) % 5000 for i in range(context)] for row in range(8)], 0)
        steady = sorted(step() for _ in range(5))[2]
        out = []
        for rows in range(8, 1, -1):
            start = time.perf_counter()
            memory.keep_rows(torch.arange(rows - 1))
            drop = time.perf_counter() - start
            out.append(
                {
                    "rows": rows,
                    "drop_ms": 1e3 * drop,
                    "next_step_ms": 1e3 * step(),
                    "steady_step_at_8_ms": 1e3 * steady,
                }
            )
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    p.add_argument("--data", default="../shared/data/gsm8k/test.jsonl")
    p.add_argument("--limit", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--method", default="latent_mas")
    p.add_argument("--max-new-tokens", type=int, default=384)
    p.add_argument("--repeats", type=int, default=2, help="A B pairs")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--micro-context", type=int, default=700, help="cache length of the micro-benchmark")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/row_compaction.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    task = get_task("gsm8k")
    questions = task.load(args.data)[: args.limit]
    spec = RunSpec(method=args.method, max_new_tokens=args.max_new_tokens)
    method = build_solver(spec, lm)
    micro = {}
    print("| selection | rows | drop ms | next step ms | a step at 8 rows ms |")
    print("|---|---|---|---|---|")
    # Each in a fresh memory. The stock selection runs again last: its first run pays for
    # pages the allocator has never handed out, the second shows its steady cost.
    for name, in_place in (("stock", False), ("in place", True), ("stock, again", False)):
        micro[name] = drops(lm, args.micro_context, in_place)
        for d in micro[name]:
            print(
                f"| {name} | {d['rows']} -> {d['rows'] - 1} | {d['drop_ms']:.1f} | {d['next_step_ms']:.1f} "
                f"| {d['steady_step_at_8_ms']:.1f} |"
            )
    print()
    method.solve([questions[0].question], task.answer_format)  # warm-up
    runs = []
    for repeat in range(args.repeats):
        for in_place in (False, True):
            wall, decode, answers = run(method, questions, task, args.batch_size, in_place)
            runs.append(
                {
                    "repeat": repeat,
                    "in_place": in_place,
                    "seconds": wall,
                    "decode_seconds": decode,
                    "texts": [a.final_text for a in answers],
                    "output_tokens": [a.output_tokens for a in answers],
                }
            )
            print(
                f"{'in place' if in_place else 'stock   '}  total {wall:7.1f} s  decode {decode:7.1f} s",
                flush=True,
            )
    identical = len({json.dumps(r["texts"]) for r in runs}) == 1
    if runs:  # --repeats 0 runs the micro-benchmark only
        best = {arm: min(r["seconds"] for r in runs if r["in_place"] == arm) for arm in (False, True)}
        decode = {
            arm: min(r["decode_seconds"] for r in runs if r["in_place"] == arm) for arm in (False, True)
        }
        print()
        print("| row selection | total s (best) | decode s (best) |")
        print("|---|---|---|")
        print(f"| stock (copy) | {best[False]:.1f} | {decode[False]:.1f} |")
        print(f"| in place | {best[True]:.1f} | {decode[True]:.1f} |")
        print(f"\nanswers token-identical across all runs: {identical}")
        tokens = sum(runs[0]["output_tokens"]) / len(questions)
        print(f"output tokens per question: {tokens:.0f} (rows that stop before the budget leave the batch)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "args": {k: str(v) for k, v in vars(args).items()},
                "model": lm.name,
                "identical": identical,
                "micro": micro,
                "runs": runs,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    run_script(main)
