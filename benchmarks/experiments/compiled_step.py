"""Would a static cache and `torch.compile` make one step cheaper on this CPU? (issue 12, item 4)

Times greedy one-token steps of the embedded model (the step latent thoughts and decoding
share) four ways from the same prompt, on transformers' own cache classes so that the
answer does not depend on our engine:
  eager + DynamicCache (what transformers does by default), eager + StaticCache,
  compiled + StaticCache (`torch.compile(model.forward)`, default mode, static shapes),
and reports compile time, the steady-state step time, the break-even number of steps,
and whether the compiled steps choose the same tokens as the eager ones.

    python benchmarks/experiments/compiled_step.py [--batch-size 1] [--steps 64]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import DynamicCache, StaticCache

from latentmas import load_model
from latentmas.engines.forward import cache_keyword
from latentmas.errors import run_script


def run(model, ids, steps, cache, forward):
    """Prefill, then `steps` greedy steps; -> (tokens, seconds per step after the first two)."""
    batch, width = ids.shape
    key = cache_keyword(type(model))  # the cache keyword was renamed within transformers 5.x
    out = forward(
        input_ids=ids,
        **{key: cache},
        use_cache=True,
        cache_position=torch.arange(width),
        position_ids=torch.arange(width).expand(batch, width),
    )
    token = out.logits[:, -1].argmax(-1, keepdim=True)
    tokens, times = [token], []
    for step in range(steps):
        position = width + step
        start = time.perf_counter()
        out = forward(
            input_ids=token,
            **{key: cache},
            use_cache=True,
            cache_position=torch.tensor([position]),
            position_ids=torch.full((batch, 1), position),
        )
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        times.append(time.perf_counter() - start)
        tokens.append(token)
    return torch.cat(tokens, 1), times


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/experiment-compiled-step"))
    args = p.parse_args(argv)
    lm = load_model("embedded")
    model = lm.model.eval()
    prompt = lm.tokenizer(
        "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning"
    ).input_ids
    ids = torch.tensor([prompt] * args.batch_size)
    length = len(prompt) + args.steps + 1
    rows = {}
    with torch.inference_mode():
        for name, make_cache, compiled in (
            ("eager_dynamic", lambda: DynamicCache(config=model.config), False),
            ("eager_static", lambda: StaticCache(config=model.config, max_cache_len=length), False),
            ("compiled_static", lambda: StaticCache(config=model.config, max_cache_len=length), True),
        ):
            forward = torch.compile(model.forward) if compiled else model.forward
            start = time.perf_counter()
            tokens, times = run(model, ids, args.steps, make_cache(), forward)
            first_run = time.perf_counter() - start
            tokens, times = run(model, ids, args.steps, make_cache(), forward)  # warm
            steady = sorted(times[2:])[len(times[2:]) // 2]  # median
            rows[name] = {"first_run_s": first_run, "step_ms": steady * 1e3, "tokens": tokens.tolist()}
            print(f"{name}: first run {first_run:.1f} s, median step {steady * 1e3:.1f} ms", flush=True)
    base = rows["eager_dynamic"]
    compiled = rows["compiled_static"]
    saving = (base["step_ms"] - compiled["step_ms"]) / 1e3
    compile_s = compiled["first_run_s"] - rows["eager_static"]["first_run_s"]
    result = {
        "batch_size": args.batch_size,
        "steps": args.steps,
        "torch": torch.__version__,
        **{f"{k}_step_ms": v["step_ms"] for k, v in rows.items()},
        "compile_seconds": compile_s,
        "compiled_over_eager_dynamic": compiled["step_ms"] / base["step_ms"],
        "break_even_steps": compile_s / saving if saving > 0 else None,
        "same_tokens_as_eager": compiled["tokens"] == base["tokens"],
    }
    print(json.dumps(result, indent=1))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"compiled-step-b{args.batch_size}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    run_script(main)
