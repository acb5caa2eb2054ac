"""Would llama.cpp make latent rollouts faster on CPU? A step-cost comparison.

Runs the embedded SmolLM2-135M GGUF in llama.cpp (llama-cpp-python's low-level batch API:
a latent step feeds the realigned vector as the batch's embedding and reads the last
hidden state back with embeddings enabled) and in our transformers engine, at batch 1 and
the same cache length, and prints ms per latent step and per greedy decode step for both.
Needs `pip install llama-cpp-python` (built from source; not a dependency of latentmas).

    python benchmarks/llamacpp_latent.py
"""

from __future__ import annotations

import argparse
import ctypes
import json
import time
from pathlib import Path

import numpy as np
import torch

from latentmas import LatentSteps, Sampling, load_model
from latentmas.engines import TransformersEngine, forward
from latentmas.engines import transformers as hf
from latentmas.engines.cache import SharedMemory
from latentmas.errors import run_script
from latentmas.handoffs import LatentConfig, build
from latentmas.models import embedded_gguf_path


def llamacpp_steps(
    gguf: Path, prompt: list[int], matrix: np.ndarray, target_norm: float, steps: int, threads: int
):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=2048, n_threads=threads, n_batch=512, verbose=False)
    ctx, n_embd = llm.ctx, llm.n_embd()
    vocab = llm.n_vocab()

    def fresh():
        llm.reset()
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        llama_cpp.llama_set_embeddings(ctx, False)
        llm.eval(prompt)  # prefill
        return llm.n_tokens

    batch = llama_cpp.llama_batch_init(1, n_embd, 1)

    def latent(n_past):
        llama_cpp.llama_set_embeddings(ctx, True)
        hidden = np.zeros(n_embd, dtype=np.float32)
        start = time.perf_counter()
        for step in range(steps):
            e = hidden @ matrix
            e *= target_norm / max(np.linalg.norm(e), 1e-6)
            ctypes.memmove(batch.embd, e.astype(np.float32).ctypes.data, n_embd * 4)
            batch.n_tokens = 1
            batch.pos[0] = n_past + step
            batch.n_seq_id[0] = 1
            batch.seq_id[0][0] = 0
            batch.logits[0] = 1
            if llama_cpp.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            out = llama_cpp.llama_get_embeddings_ith(ctx, 0)
            hidden = np.ctypeslib.as_array(out, shape=(n_embd,)).copy()
        return (time.perf_counter() - start) / steps

    def decode(n_past):
        token = prompt[-1]
        start = time.perf_counter()
        for _ in range(steps):
            llm.eval([token])
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(vocab,))
            token = int(logits.argmax())
        return (time.perf_counter() - start) / steps

    results = {}
    for name, run in (("latent", latent), ("decode", decode)) * 2:  # first round: warm-up
        results[name] = run(fresh())
    llama_cpp.llama_batch_free(batch)
    return results


def transformers_steps(prompt: list[int], steps: int):
    lm = load_model(None, device="cpu")
    thinker = TransformersEngine(lm)
    realign = thinker.realigner("ridge")
    paper = build(LatentConfig())
    results = {}
    with torch.inference_mode():
        for name in ("latent", "decode") * 2:
            memory = SharedMemory.empty(lm.model, 1)
            forward.prefill(lm.model, memory, [prompt], lm.tokenizer.pad_token_id)
            start = time.perf_counter()
            if name == "latent":
                paper.think(thinker, memory, LatentSteps(steps), None)
            else:
                hf.decode(lm.model, memory, Sampling(max_new_tokens=steps + 1), set())
            results[name] = (time.perf_counter() - start) / steps
    return results, realign


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args()
    prompt = list(range(100, 100 + args.context))
    ours, realign = transformers_steps(prompt, args.steps)
    theirs = llamacpp_steps(
        embedded_gguf_path(),
        prompt,
        realign.matrix.float().numpy(),
        realign.target_norm,
        args.steps,
        args.threads,
    )
    result = {
        "context": args.context,
        "threads": args.threads,
        "transformers_ms": {k: v * 1e3 for k, v in ours.items()},
        "llamacpp_ms": {k: v * 1e3 for k, v in theirs.items()},
        "latent_step_transformers_over_llamacpp": ours["latent"] / theirs["latent"],
        "decode_step_transformers_over_llamacpp": ours["decode"] / theirs["decode"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "llamacpp_latent.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| engine | latent step ms | decode step ms |\n|---|---|---|")
    print(f"| transformers (fp32) | {ours['latent'] * 1e3:.1f} | {ours['decode'] * 1e3:.1f} |")
    print(f"| llama.cpp (Q4_1 GGUF) | {theirs['latent'] * 1e3:.1f} | {theirs['decode'] * 1e3:.1f} |")
    print(
        f"\nllama.cpp is {result['latent_step_transformers_over_llamacpp']:.2f}x faster per latent step, "
        f"{result['decode_step_transformers_over_llamacpp']:.2f}x per decode step (batch 1, cache {args.context})"
    )


if __name__ == "__main__":
    run_script(main)
