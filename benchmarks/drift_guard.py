"""Fixed latent steps vs the drift guard (`auto`) on GSM8K: accuracy and cost, one process.

python benchmarks/drift_guard.py                 # embedded model, 20 bundled problems
python benchmarks/drift_guard.py --limit 8 --max-new-tokens 64 --settings 10,40,auto:40
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
    p.add_argument("--data", default=None, help="GSM8K JSONL (default: the bundled 20 problems)")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--settings", default="10,40,auto:40", help="comma list of --latent-steps values")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args()
    lm = load_model(args.model)
    task = get_task("gsm8k")
    examples = task.load(args.data)[: args.limit]
    rows = []
    for setting in args.settings.split(","):
        method = LatentMAS(lm, Sampling(max_new_tokens=args.max_new_tokens), latent_steps=setting)
        answers, start = [], time.perf_counter()
        for i in range(0, len(examples), args.batch_size):
            batch = examples[i : i + args.batch_size]
            answers += method.solve([e.question for e in batch], task.answer_format)
        seconds = time.perf_counter() - start
        n = len(examples)
        rows.append(
            {
                "latent_steps": setting,
                "accuracy": sum(task.grade(a.final_text, e).correct for a, e in zip(answers, examples)) / n,
                "latent_steps_mean": sum(a.latent_steps for a in answers) / n,
                "output_tokens_mean": sum(a.output_tokens for a in answers) / n,
                "seconds": seconds,
            }
        )
        print(f"{setting}: {rows[-1]}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "drift_guard.json").write_text(
        json.dumps({"model": lm.name, "n": len(examples), "rows": rows}, indent=2)
    )
    print(f"\n## Drift guard — {lm.name}, {len(examples)} GSM8K questions\n")
    print(
        "| latent steps | accuracy | latent steps per question | output tokens | seconds |\n|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['latent_steps']} | {r['accuracy']:.1%} | {r['latent_steps_mean']:.1f} | "
            f"{r['output_tokens_mean']:.1f} | {r['seconds']:.1f} |"
        )


if __name__ == "__main__":
    run_script(main)
