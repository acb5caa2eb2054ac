"""What did the trained handoff learn? The logit lens on its thoughts against the paper's.

The same tuning questions (GSM8K 1000 on) through the same team twice: with the paper's
handoff, and with the trained adapter (`--handoff trained`). Traced as `latentmas run
--trace` traces them: per agent and thought, the entropy of the logit lens on the last
hidden state, its top token, and the input-embedding token nearest to the vector fed back.
Per agent: the mean entropy of its thoughts (nats), the mean cosine of the fed-back vector
to its nearest token (1.0 would be a real token), and the commonest lens and nearest tokens.
Prints a table and writes trained-lens.json and trained-lens.md.

    python benchmarks/experiments/trained_lens.py \\
        --adapter benchmarks/results/adapters/qwen2.5-coder-0.5b/adapter.safetensors
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from latentmas import RunSpec, build_solver, get_task, load_model
from latentmas.errors import LatentMASError, run_script

GSM8K_FILE = Path(__file__).resolve().parents[3] / "shared" / "data" / "gsm8k" / "test.jsonl"


def summary(answers: list) -> list[dict]:
    """Per agent that thought: what its thoughts read as, over every question."""
    agents: dict[str, list] = {}
    for answer in answers:
        for agent in answer.trace.agents:
            if agent.steps:
                agents.setdefault(agent.role, []).extend(agent.steps)
    rows = []
    for role, steps in agents.items():
        lens = Counter(s.logit_lens[0][0] for s in steps)
        nearest = Counter(s.nearest[0][0] for s in steps)
        rows.append(
            {
                "agent": role,
                "thoughts": len(steps),
                "entropy_mean": sum(s.entropy for s in steps) / len(steps),
                "first_entropy_mean": sum(s.entropy for s in steps if s.step == 0)
                / max(1, sum(s.step == 0 for s in steps)),
                "nearest_cos_mean": sum(s.nearest[0][1] for s in steps) / len(steps),
                "lens_top": lens.most_common(5),
                "nearest_top": nearest.most_common(5),
            }
        )
    return rows


def shown(token: str) -> str:
    """A token as code in a markdown table cell (its pipes escaped)."""
    return f"`{token!r}`".replace("|", "\\|")


def table(results: dict) -> str:
    lines = [
        "| handoff | agent | thoughts | lens entropy, mean (first thought) nats | cos to nearest token "
        "| commonest lens tokens | commonest nearest tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    for handoff, rows in results.items():
        for r in rows:
            lens = ", ".join(f"{shown(t)} {c}" for t, c in r["lens_top"][:3])
            near = ", ".join(f"{shown(t)} {c}" for t, c in r["nearest_top"][:3])
            lines.append(
                f"| {handoff} | {r['agent']} | {r['thoughts']} | {r['entropy_mean']:.2f} "
                f"({r['first_entropy_mean']:.2f}) | {r['nearest_cos_mean']:.3f} | {lens} | {near} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-0.5b")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--adapter", type=Path, required=True)
    p.add_argument("--data", type=Path, default=GSM8K_FILE)
    p.add_argument("--offset", type=int, default=1000, help="the tuning split: never trained on")
    p.add_argument("--questions", type=int, default=8)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/trained-lens-0.5b"))
    args = p.parse_args(argv)
    if not args.adapter.is_file():
        raise LatentMASError(f"--adapter {args.adapter}: no such file")
    lm = load_model(args.model, dtype=args.dtype)
    task = get_task("gsm8k")
    examples = task.load(str(args.data))[args.offset : args.offset + args.questions]
    questions = [e.question for e in examples]
    results = {}
    for name, handoff in (("paper's", "latent"), ("trained", f"trained:adapter={args.adapter}")):
        spec = RunSpec(
            model=args.model,
            dtype=args.dtype,
            method="latent_mas",
            handoff=handoff,
            trace=True,
            max_new_tokens=16,
        )
        answers = build_solver(spec, lm).solve(questions, task.answer_format)
        results[name] = summary(answers)
        print(f"{name}: traced {len(answers)} questions", flush=True)
    text = table(results)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = vars(args) | {"adapter": str(args.adapter), "data": str(args.data), "out": str(args.out)}
    (args.out / "trained-lens.json").write_text(
        json.dumps({"settings": settings, "agents": results}, indent=1) + "\n"
    )
    (args.out / "trained-lens.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    run_script(main)
