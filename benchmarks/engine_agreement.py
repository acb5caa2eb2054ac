"""Do two engines give the same answers? The same GSM8K questions, greedy, every method, on
the transformers engine and on another (vLLM by default), in one process.

Per method: how many answers are token-identical, how many grade the same, and where the
first differing token falls (a late difference is rounding in another kernel meeting a
near-tie; an early one would be a wrong cache). Prints a table, writes JSON.

    python benchmarks/engine_agreement.py --model qwen2.5-coder-0.5b --dtype bfloat16 --limit 20
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from latentmas import RunSpec, build_solver, get_task, load_model
from latentmas.errors import run_script

METHODS = ("single", "text_mas", "latent_mas")


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first token where two outputs differ (None: identical)."""
    for index, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return index
    return None if len(a) == len(b) else min(len(a), len(b))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-0.5b")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--engine", default="vllm", help="the engine compared with transformers")
    p.add_argument("--data", default="../shared/data/gsm8k/test.jsonl")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/engine-agreement"))
    args = p.parse_args(argv)

    task = get_task("gsm8k")
    questions = task.load(args.data)[: args.limit]
    lm = load_model(args.model, device="cpu", dtype=args.dtype)
    rows = []
    for method in args.methods.split(","):
        outputs = {}
        for engine in ("transformers", args.engine):
            print(f"{method} on {engine}", file=sys.stderr, flush=True)
            spec = RunSpec(method=method, engine=engine, max_new_tokens=args.max_new_tokens)
            solver = build_solver(spec, lm)
            answers = []
            for start in range(0, len(questions), args.batch_size):
                batch = questions[start : start + args.batch_size]
                answers += solver.solve([q.question for q in batch], task.answer_format)
            outputs[engine] = answers
        ours, theirs = outputs["transformers"], outputs[args.engine]
        tokenize = lm.tokenizer
        differences = [
            first_difference(tokenize(a.final_text).input_ids, tokenize(b.final_text).input_ids)
            for a, b in zip(ours, theirs)
        ]
        graded = [
            (
                task.is_correct(task.extract(a.final_text), q.gold),
                task.is_correct(task.extract(b.final_text), q.gold),
            )
            for a, b, q in zip(ours, theirs, questions)
        ]
        rows.append(
            {
                "method": method,
                "n": len(questions),
                "identical": sum(d is None for d in differences),
                "same_grade": sum(x == y for x, y in graded),
                "correct_transformers": sum(x for x, _ in graded),
                f"correct_{args.engine}": sum(y for _, y in graded),
                "first_difference_at": sorted(d for d in differences if d is not None),
                "final_texts": [[a.final_text, b.final_text] for a, b in zip(ours, theirs)],
            }
        )
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "model": lm.name,
        "dtype": lm.dtype,
        "engine": args.engine,
        "settings": vars(args) | {"out": str(args.out)},
        "rows": rows,
    }
    (args.out / f"agreement-{lm.dtype}-{'-'.join(args.methods.split(','))}.json").write_text(
        json.dumps(result, indent=1) + "\n"
    )
    print(
        f"\n## transformers vs {args.engine}: {lm.name}, {lm.dtype}, {len(questions)} GSM8K questions, greedy\n"
    )
    print(
        "| method | identical | same grade | correct (transformers) | correct (other) | first difference at token |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        where = ", ".join(map(str, r["first_difference_at"])) or "-"
        print(
            f"| {r['method']} | {r['identical']}/{r['n']} | {r['same_grade']}/{r['n']} | "
            f"{r['correct_transformers']} | {r[f'correct_{args.engine}']} | {where} |"
        )


if __name__ == "__main__":
    run_script(main)
