"""Experiment 19 of docs/quality.md (not in the package): a realignment learned from the model's own reading.

The paper's ridge map is fitted on the vocabulary (output-embedding rows -> input-embedding
rows), never on a hidden state the model produced. This fits the map on what a thought
stands in for: while the model reads a worked solution, the last layer's hidden state at
position t (what the engine would realign) against the input embedding of the token at t+1
(what the model reads next). Ridge regression, closed form, lambda relative to the Gram
matrix's mean diagonal as in `latentmas.engines.realign`. The fit uses GSM8K test questions
300 onwards (their gold solutions), apart from the reported split (0-199) and the tuning
split (1000-1023).

It first prints how close each realignment puts a held-out hidden state to the next
token's embedding (cosine, and how often the nearest vocabulary embedding is that token),
then runs `benchmarks/quality.py` with the learned map in place of ridge (same rescale):

    python benchmarks/experiments/learned_realignment.py --offset 1000 --limit 24 \\
        --configs "single,latent_mas" --out benchmarks/results/experiment-learned-realignment
"""

import argparse
import json
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import quality  # noqa: E402

from latentmas import load_model  # noqa: E402
from latentmas.engines.forward import decoder  # noqa: E402
from latentmas.engines.realign import (  # noqa: E402
    _FITTED,
    Realigner,
    input_embedding_matrix,
    realigner_for,
    ridge_matrix,
)

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--fit-offset", type=int, default=300)
parser.add_argument("--fit-limit", type=int, default=120, help="solutions to read (about 150 pairs each)")
parser.add_argument("--lam", type=float, default=1e-3)
parser.add_argument("--fit-only", action="store_true", help="print the fit's diagnostics and stop")
own, rest = parser.parse_known_args()

lm = load_model("qwen2.5-coder-0.5b")
model, tokenizer = lm.model, lm.tokenizer
rows = [json.loads(line) for line in quality.GSM8K_FILE.read_text().splitlines() if line.strip()]
rows = rows[own.fit_offset : own.fit_offset + own.fit_limit]


def solution(answer: str) -> str:
    """A GSM8K gold answer as a model would write it: calculator marks out, the result boxed."""
    work, _, final = answer.partition("####")
    return re.sub(r"<<[^>]*>>", "", work).strip() + f"\nThe answer is \\boxed{{{final.strip()}}}."


hidden_states, next_ids = [], []
with torch.no_grad():
    for index, row in enumerate(rows):
        chat = [{"role": "user", "content": row["question"]}]
        prompt = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(
            chat + [{"role": "assistant", "content": solution(row["answer"])}], tokenize=False
        )
        start = len(tokenizer(prompt, add_special_tokens=False).input_ids)
        ids = tokenizer(full, add_special_tokens=False, return_tensors="pt").input_ids
        out = decoder(model)(input_ids=ids).last_hidden_state[0]
        # The state at the prompt's end predicts the answer's first token: a thought starts there.
        hidden_states.append(out[start - 1 : -1].float())
        next_ids.append(ids[0, start:])
        if index % 20 == 19:
            print(f"read {index + 1}/{len(rows)} solutions", flush=True)

h = torch.cat(hidden_states).double()
nxt = torch.cat(next_ids)
w_in = input_embedding_matrix(model)
targets = w_in[nxt].double()
split = int(0.8 * len(h))
x_fit, y_fit, x_val, ids_val = h[:split], targets[:split], h[split:], nxt[split:]
learned = ridge_matrix(x_fit, y_fit, own.lam)  # the same relative-lambda solve as the paper's map
print(f"fitted on {split} pairs, validated on {len(h) - split}")

target_norm = w_in.norm(dim=-1).mean().item()
candidates = {
    "learned": Realigner("ridge", target_norm, matrix=learned),
    "ridge (paper)": realigner_for(model, "ridge"),
    "norm": realigner_for(model, "norm"),
    "soft": realigner_for(model, "soft"),
}
unit_vocab = torch.nn.functional.normalize(w_in, dim=-1)
sample = slice(0, min(800, len(ids_val)))
print("| realignment | mean cos to the next token's embedding | nearest embedding is that token |")
print("|---|---|---|")
with torch.no_grad():
    for name, realign in candidates.items():
        e = realign(x_val.float()).float()
        cos = torch.nn.functional.cosine_similarity(e, w_in[ids_val], dim=-1).mean().item()
        nearest = (torch.nn.functional.normalize(e[sample], dim=-1) @ unit_vocab.T).argmax(-1)
        hit = (nearest == ids_val[sample]).float().mean().item()
        print(f"| {name} | {cos:.3f} | {100 * hit:.1f}% |", flush=True)
if own.fit_only:
    sys.exit(0)

_FITTED.setdefault(model, {})["ridge"] = candidates["learned"]  # the engine asks for "ridge"
quality.load_model = lambda name: lm
sys.exit(quality.main(rest))
