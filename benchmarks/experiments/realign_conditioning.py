"""How far do realigned thoughts sit from the input embeddings, at 0.5B and at 1.5B?

For each model: whether its LM head is tied to its input embeddings, the conditioning of
the ridge system (W_out^T W_out + lambda I), and, for the last-layer hidden states of a few
GSM8K prompts (every position, as a latent step would read them), what realignment makes
of them: the norm before the rescale, and the cosine between the realigned vector and its
nearest input embedding (1.0 would be a real token). Realign `none` (the raw state) is
shown beside ridge. Prints a table and writes JSON.

    python benchmarks/experiments/realign_conditioning.py --models qwen2.5-coder-0.5b,qwen2.5-coder-1.5b
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from latentmas import get_task, load_model
from latentmas.engines.realign import input_embedding_matrix, output_embedding_matrix, realigner_for
from latentmas.errors import run_script

GSM8K = Path(__file__).resolve().parents[3] / "shared" / "data" / "gsm8k" / "test.jsonl"


@torch.no_grad()
def analyse(name: str, questions: int) -> dict:
    lm = load_model(name, device="cpu", dtype="float32")
    model, tokenizer = lm.model, lm.tokenizer
    w_in, w_out = input_embedding_matrix(model), output_embedding_matrix(model)
    vocab = min(w_in.shape[0], w_out.shape[0])
    tied = bool(torch.equal(w_in[:vocab], w_out[:vocab]))
    gram = w_out[:vocab].double().T @ w_out[:vocab].double()
    eig = torch.linalg.eigvalsh(gram)
    reg = 1e-5 * gram.diagonal().mean()
    ridge = realigner_for(model, "ridge")
    unit_in = torch.nn.functional.normalize(w_in, dim=-1)
    states = []
    task = get_task("gsm8k")
    for example in task.load(str(GSM8K))[:questions]:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": example.question + "\n" + task.answer_format}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        out = model.model(input_ids=torch.tensor([ids]))
        states.append(out.last_hidden_state[0])
    hidden = torch.cat(states).float()

    def nearest_cos(vectors: torch.Tensor) -> torch.Tensor:
        return (torch.nn.functional.normalize(vectors, dim=-1) @ unit_in.T).max(dim=-1).values

    mapped = hidden @ ridge.matrix  # before the norm rescale
    realigned = ridge(hidden)
    return {
        "model": lm.name,
        "hidden_size": model.config.hidden_size,
        "tied_head": tied,
        "gram_condition": float(eig.max() / eig.min().clamp_min(1e-300)),
        "ridge_condition": float((eig.max() + reg) / (eig.min() + reg)),
        "states": hidden.shape[0],
        "input_embedding_norm": float(w_in.norm(dim=-1).mean()),
        "hidden_norm": float(hidden.norm(dim=-1).mean()),
        "ridge_mapped_norm": float(mapped.norm(dim=-1).mean()),
        "nearest_cos_ridge": float(nearest_cos(realigned).mean()),
        "nearest_cos_none": float(nearest_cos(hidden).mean()),
        "nearest_cos_ridge_p10": float(nearest_cos(realigned).quantile(0.1)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="qwen2.5-coder-0.5b,qwen2.5-coder-1.5b")
    parser.add_argument("--questions", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/realign_conditioning.json"))
    args = parser.parse_args()
    rows = [analyse(name.strip(), args.questions) for name in args.models.split(",")]
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    run_script(main)
