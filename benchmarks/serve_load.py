"""Load on the HTTP server, with dynamic batching on and off.

Starts `latentmas serve`'s app in this process on 127.0.0.1, sends a bounded number of
chat-completion requests at a fixed concurrency (only to localhost), and reports
throughput, p50/p95 latency and errors for each setting. Writes serve_load.json.

    python benchmarks/serve_load.py --quick            # tiny random model, seconds
    python benchmarks/serve_load.py --requests 200 --concurrency 16 --model ''   # embedded model
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from latentmas import get_task, load_model
from latentmas.errors import run_script
from latentmas.serve.server import create_app
from latentmas.tiny import tiny_loaded


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load(url: str, bodies: list[dict], concurrency: int) -> dict:
    latencies, errors = [], 0
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=600) as client:

        async def one(body):
            nonlocal errors
            async with gate:
                start = time.perf_counter()
                response = await client.post(f"{url}/v1/chat/completions", json=body)
                latencies.append(time.perf_counter() - start)
                errors += response.status_code != 200

        start = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        wall = time.perf_counter() - start
    latencies.sort()
    return {
        "requests": len(bodies),
        "errors": errors,
        "seconds": wall,
        "requests_per_second": len(bodies) / wall,
        "p50_seconds": statistics.median(latencies),
        "p95_seconds": latencies[max(0, int(0.95 * len(latencies)) - 1)],
    }


def run(lm, max_batch: int, bodies: list[dict], concurrency: int) -> dict:
    port = free_port()
    app = create_app(lm, max_batch=max_batch, max_wait_ms=20, queue_size=len(bodies) + 1)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        return asyncio.run(load(f"http://127.0.0.1:{port}", bodies, concurrency))
    finally:
        server.should_exit = True
        thread.join()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny random model, 64 requests")
    p.add_argument(
        "--model", default=None, help="default with --quick: a tiny random model; else the embedded model"
    )
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--latent-steps", type=int, default=10)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args()
    if args.quick:
        args.requests = min(args.requests, 64)
    lm = tiny_loaded("qwen3") if args.quick and args.model is None else load_model(args.model or None)
    questions = [e.question for e in get_task("gsm8k").load()]
    bodies = [
        {
            "messages": [{"role": "user", "content": questions[i % len(questions)]}],
            "max_tokens": args.max_tokens,
            "method": "latent_mas",
            "latent_steps": args.latent_steps,
        }
        for i in range(args.requests)
    ]
    results = {}
    for name, max_batch in (("batching off", 1), ("batching on", args.max_batch)):
        print(f"{name}: {args.requests} requests at concurrency {args.concurrency} ...", flush=True)
        results[name] = run(lm, max_batch, bodies, args.concurrency)
    on, off = results["batching on"], results["batching off"]
    summary = {
        "model": lm.name,
        "settings": vars(args) | {"out": str(args.out)},
        "results": results,
        "throughput_gain": on["requests_per_second"] / off["requests_per_second"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_load.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n## Server load — {lm.name}, {args.requests} requests, concurrency {args.concurrency}\n")
    print("| setting | requests/s | p50 s | p95 s | errors |\n|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['requests_per_second']:.2f} | {r['p50_seconds']:.2f} | {r['p95_seconds']:.2f} | {r['errors']} |"
        )
    print(
        f"\nbatching gives {summary['throughput_gain']:.2f}x the throughput; wrote {args.out / 'serve_load.json'}"
    )


if __name__ == "__main__":
    run_script(main)
