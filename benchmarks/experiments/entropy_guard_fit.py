"""Fit the entropy guard's thresholds on the tuning split, from what the thoughts read as.

Runs default latent_mas (m thoughts per non-final agent, no guard) on the tuning questions
(GSM8K 1000-1049) and records the logit-lens entropy of every state that becomes a thought
(step 0: the state at the end of the agent's prompt). On the 1.5B model these entropies
fall into two groups, states that read like text (about 2.6 nats) and the near-uniform
fixed point the thoughts lock into (about 6.9); the fit separates them:

- two-means clustering of all the entropies (1-D k-means, k = 2);
- max_thought_entropy = the midpoint of the two centres;
- max_entropy_jump = half the distance between them (a rise of half the gap in one step).

(A first rule, the 95th percentile of the prompt-end entropies, was dropped before any
run used it: later agents' prompt ends already sit inside the fixed point at 1.5B, so it
gave 7.8 nats, above most broken thoughts.)

Prints the entropy per agent and step (median over questions), how many thoughts each
threshold would cut, and writes JSON. No decoding (one token), so it is quick:

    python benchmarks/experiments/entropy_guard_fit.py --model qwen2.5-coder-0.5b --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from latentmas import LatentMAS, Sampling, get_task, load_model
from latentmas.engines.forward import lm_logits
from latentmas.engines.rollout import EntropyGuard
from latentmas.errors import run_script

GSM8K = Path(__file__).resolve().parents[3] / "shared" / "data" / "gsm8k" / "test.jsonl"


class EntropyLog:
    """An observer of the agent loop: the lens entropy of each state fed back, per agent."""

    def __init__(self, guard: EntropyGuard, rows: list) -> None:
        self.guard, self.rows = guard, rows

    def __call__(self, questions: list[str], method: dict) -> EntropyLog:
        self.batch = [[] for _ in questions]
        return self

    def begin_agent(self, role: str, prompts) -> None:
        for row in self.batch:
            row.append([])

    def on_step(self, step: int, hidden: torch.Tensor, embedding: torch.Tensor, active: torch.Tensor) -> None:
        for row, value in zip(self.batch, self.guard.entropy(hidden).tolist()):
            row[-1].append(value)

    def finish(self, answers) -> None:
        self.rows += [[agent for agent in row if agent] for row in self.batch]


def quantile(values: list[float], q: float) -> float:
    return float(torch.tensor(values).quantile(q))


def two_means(values: list[float]) -> tuple[float, float]:
    """The two centres of 1-D k-means (k = 2), started at the lower and upper quartiles."""
    data = torch.tensor(values)
    centres = torch.stack([data.quantile(0.25), data.quantile(0.75)])
    for _ in range(100):
        nearest = (data[:, None] - centres[None]).abs().argmin(dim=1)
        moved = torch.stack([data[nearest == k].mean() for k in range(2)])
        if torch.allclose(moved, centres):
            break
        centres = moved
    return float(centres[0]), float(centres[1])


def tuning_run_parser(description: str, model: str, limit: int) -> argparse.ArgumentParser:
    """The options of an experiment on the tuning questions (GSM8K from 1000 on)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default=model)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--offset", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=limit)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    return parser


def tuning_questions(args: argparse.Namespace):
    """-> (the model, the task, the tuning examples) the options name."""
    lm = load_model(args.model, device="cpu", dtype=args.dtype)
    task = get_task("gsm8k")
    return lm, task, task.load(str(GSM8K))[args.offset : args.offset + args.limit]


def write_result(path: Path | None, result: dict) -> None:
    """Write an experiment's JSON where --out says (nowhere without it)."""
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1))
        print(f"wrote {path}")


def main() -> None:
    args = tuning_run_parser(__doc__.split("\n")[0], "qwen2.5-coder-0.5b", 50).parse_args()
    lm, task, examples = tuning_questions(args)
    rows: list[list[list[float]]] = []
    log = EntropyLog(EntropyGuard(lambda h: lm_logits(lm.model, h)), rows)
    method = LatentMAS(lm, Sampling(max_new_tokens=1), latent_steps=args.steps).watch(log)
    for start in range(0, len(examples), args.batch_size):
        method.solve([e.question for e in examples[start : start + args.batch_size]], task.answer_format)
        print(f"  {len(rows)}/{len(examples)}", flush=True)

    agents = len(rows[0])
    low, high = two_means([value for row in rows for agent in row for value in agent])
    max_entropy, max_jump = (low + high) / 2, (high - low) / 2
    print(f"\n{lm.name} ({args.dtype}), GSM8K {args.offset}-{args.offset + args.limit - 1}, m = {args.steps}")
    print("median lens entropy (nats) per agent and step; step 0 = the prompt's last state")
    print("agent | " + " ".join(f"{s:>5}" for s in range(args.steps)))
    medians = []
    for a in range(agents):
        per_step = [quantile([row[a][s] for row in rows], 0.5) for s in range(args.steps)]
        medians.append(per_step)
        print(f"{a:>5} | " + " ".join(f"{v:5.2f}" for v in per_step))
    thoughts = [row[a][s] for row in rows for a in range(agents) for s in range(1, args.steps)]
    rises = [row[a][s] - row[a][s - 1] for row in rows for a in range(agents) for s in range(1, args.steps)]
    above = sum(v > max_entropy for v in thoughts) / len(thoughts)
    jumps = sum(r > max_jump for r in rises) / len(rises)
    print(f"\ntwo-means centres {low:.2f} and {high:.2f} nats")
    print(f"fit: max_thought_entropy = {max_entropy:.2f}, max_entropy_jump = {max_jump:.2f}")
    print(
        f"thoughts (steps >= 1) above the entropy limit: {above:.1%}; rises above the jump limit: {jumps:.1%}"
    )
    result = {
        "model": lm.name,
        "dtype": args.dtype,
        "questions": [args.offset, args.offset + args.limit],
        "steps": args.steps,
        "centres": [round(low, 2), round(high, 2)],
        "max_thought_entropy": round(max_entropy, 2),
        "max_entropy_jump": round(max_jump, 2),
        "share_of_thoughts_above": above,
        "share_of_rises_above": jumps,
        "median_entropy_per_agent_step": medians,
        "entropies": rows,
    }
    write_result(args.out, result)


if __name__ == "__main__":
    run_script(main)
