"""Experiment 9 of docs/quality.md (a negative result, kept to be rerun, not in the package).

Stop a row's latent thoughts once its thought reads, through the logit lens, as an
end-of-turn token (<|im_end|>), with at most 10 per agent. Hypothesis: the thoughts that read
as end-of-turn make the final agent end its own turn early. Run on the tuning split:

    python benchmarks/experiments/stop_thoughts_at_end_of_turn.py --offset 1000 --limit 24 \
        --configs "latent_mas[m=auto:10]" --out benchmarks/results/experiment-stop-at-end-of-turn
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import quality  # noqa: E402

from latentmas import load_model  # noqa: E402
from latentmas.engines import forward, rollout  # noqa: E402
from latentmas.models import stop_token_ids  # noqa: E402

lm = load_model("qwen2.5-coder-0.5b")
stops = torch.tensor(sorted(stop_token_ids(lm.tokenizer, lm.model.generation_config.eos_token_id)))
print("stop ids", stops.tolist(), [lm.tokenizer.decode([int(t)]) for t in stops])


def ends_turn(self, hidden, previous, start):
    return torch.isin(forward.lm_logits(lm.model, hidden).argmax(-1), stops)


rollout.DriftGuard.stops = ends_turn
quality.load_model = lambda name: lm
sys.exit(quality.main(sys.argv[1:]))
