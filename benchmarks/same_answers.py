"""Does a change to the code change an answer? Final texts of a fixed set of runs, before and after.

Runs `latentmas eval` (through `python -m latentmas`, so `PYTHONPATH=<other checkout>/src`
runs another commit's code) on the same GSM8K questions for every method, handoff and team
listed in CONFIGS, greedy, and writes each run's final texts to one JSON file. `--compare
A.json B.json` says, per configuration, how many final texts are token-identical and shows
the first difference.

    PYTHONPATH=/path/to/old/src python benchmarks/same_answers.py --out before.json
    python benchmarks/same_answers.py --out after.json
    python benchmarks/same_answers.py --compare before.json after.json

The flags are the command line's, so this also checks that every existing flag still works.
(`eval --method text_mas --message-tokens N` is not among them: before the one-spec change
`eval` checked its flags against latent_mas and refused it.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from latentmas.errors import LatentMASError, run_script

GSM8K_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"

# name -> the command line's flags for it (besides model, dtype, data, limit, batch, tokens).
CONFIGS: dict[str, list[str]] = {
    "single": ["--method", "single"],
    "text_mas": ["--method", "text_mas"],
    "text_mas[hierarchical]": ["--method", "text_mas", "--topology", "hierarchical"],
    "latent_mas": ["--method", "latent_mas"],
    "latent_mas[hierarchical]": ["--method", "latent_mas", "--topology", "hierarchical"],
    "latent_mas[team=hierarchical]": ["--method", "latent_mas", "--team", "hierarchical"],
    "latent_mas[team=hierarchical;latent_only]": [
        "--method",
        "latent_mas",
        "--team",
        "hierarchical",
        "--memory",
        "latent_only",
    ],
    "latent_mas[m=auto]": ["--method", "latent_mas", "--latent-steps", "auto"],
    "latent_mas[latent_only]": ["--method", "latent_mas", "--memory", "latent_only"],
    "latent_mas[once]": ["--method", "latent_mas", "--question-once"],
    "latent_mas[reentry]": [
        "--method",
        "latent_mas",
        "--thoughts-from",
        "0.5",
        "--thoughts-enter",
        "--realign",
        "none",
    ],
    "latent_mas[beta=0.5]": ["--method", "latent_mas", "--thought-weight", "0.5"],
    "latent_mas[relay=0.3]": ["--method", "latent_mas", "--relay-layers", "0.3"],
    "latent_mas[keep=0.9]": ["--method", "latent_mas", "--relay-keep", "0.9"],
    "latent_mas[states]": ["--method", "latent_mas", "--handoff", "states"],
    "latent_mas[entropy]": [
        "--method",
        "latent_mas",
        "--max-thought-entropy",
        "3.51",
        "--max-entropy-jump",
        "1.6",
    ],
}


def final_texts(flags: list[str], args: argparse.Namespace, folder: Path) -> dict[str, dict]:
    command = [sys.executable, "-m", "latentmas", "eval", "--task", "gsm8k", "--data", str(args.data)]
    command += ["--limit", str(args.limit), "--batch-size", str(args.batch_size)]
    command += ["--max-new-tokens", str(args.max_new_tokens), "--model", args.model, "--dtype", args.dtype]
    command += ["--out", str(folder), *flags]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=os.environ)
    rows = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    return {r["id"]: {"final_text": r["final_text"], "output_tokens": r["output_tokens"]} for r in rows}


def compare(before: dict, after: dict) -> int:
    different = 0
    print("| configuration | identical final texts | first difference |")
    print("|---|---|---|")
    for name in before | after:
        a, b = before.get(name), after.get(name)
        if a is None or b is None:
            print(f"| {name} | only in {'after' if a is None else 'before'} | |")
            different += 1
            continue
        same = [i for i in a if i in b and a[i] == b[i]]
        first = next((i for i in a if a[i] != b.get(i)), None)
        shown = "" if first is None else f"{first}: {a[first]['final_text'][:60]!r}"
        print(f"| {name} | {len(same)}/{len(a)} | {shown} |")
        different += len(same) != len(a)
    return 1 if different else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-0.5b")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--data", type=Path, default=GSM8K_FILE)
    p.add_argument("--limit", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma list of names in CONFIGS")
    p.add_argument("--out", type=Path, help="JSON file of every configuration's final texts")
    p.add_argument("--compare", type=Path, nargs=2, metavar=("BEFORE", "AFTER"))
    args = p.parse_args(argv)
    if args.compare:
        missing = [str(path) for path in args.compare if not path.is_file()]
        if missing:
            raise LatentMASError(f"--compare: no such file {', '.join(missing)}")
        before, after = (json.loads(path.read_text()) for path in args.compare)
        return compare(before, after)
    if args.out is None:
        p.error("--out or --compare is needed")
    unknown = [name for name in args.configs.split(",") if name not in CONFIGS]
    if unknown:
        raise LatentMASError(f"--configs: unknown {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    texts = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.configs.split(","):
            print(f"{name} ...", file=sys.stderr, flush=True)
            texts[name] = final_texts(CONFIGS[name], args, Path(scratch) / str(len(texts)))
    args.out.write_text(json.dumps(texts, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    run_script(main)
