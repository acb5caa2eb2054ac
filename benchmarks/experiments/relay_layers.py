"""Which layers the layer-selective relay keeps, and what the thoughts then read as.

Runs latent_mas with `--relay-layers SHARE` (and, for comparison, the paper's handoff) on
the tuning questions (GSM8K 1000-...), stops after one decoded token, and records:

- per handoff (the agent reading), how often each layer was chosen across questions;
- the logit-lens entropy of every state fed back as a thought, per agent and step (median
  over questions), with and without the relay: at 1.5B the paper's handoff sends the
  critic's first thought into a near-uniform fixed point (about 7 nats); this shows
  whether hiding earlier agents outside the chosen layers keeps the thoughts readable.

    python benchmarks/experiments/relay_layers.py --model qwen2.5-coder-1.5b --limit 16 \
        --out benchmarks/results/relay_layers-1.5b.json
"""

from __future__ import annotations

import sys
from pathlib import Path

from latentmas import LatentMAS, Sampling
from latentmas.engines.forward import lm_logits
from latentmas.engines.rollout import EntropyGuard
from latentmas.errors import run_script
from latentmas.handoffs import LatentConfig, ViewConfig

sys.path.insert(0, str(Path(__file__).parent))
from entropy_guard_fit import (  # noqa: E402
    EntropyLog,
    quantile,
    tuning_questions,
    tuning_run_parser,
    write_result,
)


def run(lm, questions, answer_format, view, steps, batch_size):
    """-> (entropies per question/agent/step, chosen layers per handoff as [question][layer])."""
    rows: list = []
    log = EntropyLog(EntropyGuard(lambda h: lm_logits(lm.model, h)), rows)
    method = LatentMAS(lm, Sampling(max_new_tokens=1), latent_steps=steps, handoff=view).watch(log)
    chosen: dict[int, list[list[bool]]] = {}
    engine = method.engine
    read = engine.prefill

    def prefill(memory, prompts, *args, **kwargs):
        read(memory, prompts, *args, **kwargs)
        if memory.relayed is not None:
            chosen.setdefault(memory.agent, []).extend(memory.relayed.T.tolist())

    engine.prefill = prefill
    for start in range(0, len(questions), batch_size):
        method.solve(questions[start : start + batch_size], answer_format)
        print(f"  {len(rows)}/{len(questions)}", flush=True)
    return rows, chosen


def medians(rows, steps):
    return [[quantile([row[a][s] for row in rows], 0.5) for s in range(steps)] for a in range(len(rows[0]))]


def main() -> None:
    parser = tuning_run_parser(__doc__.split("\n")[0], "qwen2.5-coder-1.5b", 16)
    parser.add_argument("--share", type=float, default=0.3)
    args = parser.parse_args()
    lm, task, examples = tuning_questions(args)
    questions = [e.question for e in examples]
    result: dict = {"model": lm.name, "dtype": args.dtype, "share": args.share, "steps": args.steps}
    for name, view in (("paper", LatentConfig()), ("relay", ViewConfig(relay_layers=args.share))):
        rows, chosen = run(lm, questions, task.answer_format, view, args.steps, args.batch_size)
        result[name] = {"median_entropy_per_agent_step": medians(rows, args.steps)}
        print(f"\n{name}: median lens entropy (nats) per agent and step (step 0 = the prompt's end)")
        for agent, per_step in enumerate(result[name]["median_entropy_per_agent_step"]):
            print(f"  agent {agent} | " + " ".join(f"{v:5.2f}" for v in per_step))
        if chosen:
            counts = {agent: [sum(col) for col in zip(*rows)] for agent, rows in chosen.items()}
            result[name]["times_each_layer_was_chosen"] = counts
            print("  layers chosen (count over questions), per reading agent:")
            for agent, per_layer in counts.items():
                print(f"  agent {agent} | " + " ".join(f"{c:2d}" for c in per_layer))
    write_result(args.out, result)


if __name__ == "__main__":
    run_script(main)
