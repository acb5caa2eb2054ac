"""What tracing costs: the same LatentMAS run with tracing off, on, and off again.

python benchmarks/trace_overhead.py            # embedded model, 8 GSM8K questions
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from latentmas import LatentMAS, Sampling, get_task, load_model
from latentmas.errors import run_script


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--limit", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--latent-steps", type=int, default=10)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args()
    lm = load_model(args.model)
    task = get_task("gsm8k")
    questions = [e.question for e in task.load()[: args.limit]]
    sampling = Sampling(max_new_tokens=args.max_new_tokens)
    runs = {}
    for label, trace in (("off", False), ("on", True), ("off again", False)):
        method = LatentMAS(lm, sampling, latent_steps=args.latent_steps, trace=trace)
        method.solve(questions[:1], task.answer_format)  # warm-up
        start, answers = time.perf_counter(), []
        for i in range(0, len(questions), args.batch_size):
            answers += method.solve(questions[i : i + args.batch_size], task.answer_format)
        runs[label] = {"seconds": time.perf_counter() - start, "answers": [a.final_text for a in answers]}
        print(f"trace {label}: {runs[label]['seconds']:.2f} s", flush=True)
    result = {
        "model": lm.name,
        "n": len(questions),
        "seconds": {k: v["seconds"] for k, v in runs.items()},
        "on_over_off": runs["on"]["seconds"] / runs["off"]["seconds"],
        "off_again_over_off": runs["off again"]["seconds"] / runs["off"]["seconds"],
        "same_answers": runs["on"]["answers"] == runs["off"]["answers"] == runs["off again"]["answers"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "trace_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"\ntracing on / off = {result['on_over_off']:.2f}x; off again / off = {result['off_again_over_off']:.2f}x "
        f"(run-to-run noise); identical answers: {result['same_answers']}"
    )


if __name__ == "__main__":
    run_script(main)
