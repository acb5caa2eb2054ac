"""Which batch size should the long quality runs use? Seconds per question at each batch size.

The quality runs of docs/quality.md ran at batch 8 until 2026-12-04. On this 2-core CPU a
larger batch may answer more questions per second; in float32 it changes no answer (the
engine is batch-invariant), in bfloat16 rows round apart with the batch. Same GSM8K
questions for every cell, `single` and the default `latent_mas`, each dtype in one process.
Run it alone on the machine. Prints a table and writes JSON.

    python benchmarks/experiments/batch_size.py --model qwen2.5-coder-1.5b --dtypes bfloat16,float32 --batch-sizes 8,16
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from latentmas import LatentMAS, Sampling, SingleAgent, get_task, load_model
from latentmas.errors import run_script

GSM8K = Path(__file__).resolve().parents[3] / "shared" / "data" / "gsm8k" / "test.jsonl"


def seconds_per_question(method, questions: list[str], answer_format: str, batch: int) -> float:
    method.solve(questions[:2], answer_format)  # warm-up: kernels, caches
    began = time.perf_counter()
    for start in range(0, len(questions), batch):
        method.solve(questions[start : start + batch], answer_format)
    return (time.perf_counter() - began) / len(questions)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-1.5b")
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--batch-sizes", default="8,16")
    parser.add_argument(
        "--limit", type=int, default=16, help="GSM8K questions (a multiple of every batch size)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/batch_size.json"))
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    task = get_task("gsm8k")
    questions = [e.question for e in task.load(str(GSM8K))[: args.limit]]
    sampling = Sampling(max_new_tokens=args.max_new_tokens)
    rows = []
    print("| dtype | method | " + " | ".join(f"s/q at batch {b}" for b in batches) + " |")
    print("|---|---|" + "---|" * len(batches))
    for dtype in args.dtypes.split(","):
        lm = load_model(args.model, dtype=dtype)
        for name, method in [
            ("single", SingleAgent(lm, sampling)),
            ("latent_mas", LatentMAS(lm, sampling, topology="sequential", latent_steps=10)),
        ]:
            cells = {b: seconds_per_question(method, questions, task.answer_format, b) for b in batches}
            rows.append({"dtype": dtype, "method": name, "seconds_per_question": cells})
            print(
                f"| {dtype} | {name} | " + " | ".join(f"{cells[b]:.2f}" for b in batches) + " |", flush=True
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": args.model, "limit": args.limit, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    run_script(main)
