"""How strong is the test suite? Mutation score of the core modules (mutmut).

Copies `src/latentmas` and `tests` into a flat work folder (the editable install would
otherwise shadow mutmut's mutants), mutates the engine's cache, forward pass, rollout and
realignment and the agent loop, runs the
engine-level tests against a uniform random sample of the mutants, and prints the share
killed per module with a 95% Wilson interval. Needs `pip install mutmut==3.8.1`.

    python benchmarks/mutation_score.py --sample 300      # about 40 min on 2 CPU cores

BLAS threads are pinned to one: mutmut forks its test runners, and forked children of a
multi-threaded OpenMP parent deadlock.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from latentmas.errors import run_script
from latentmas.evaluation.stats import wilson_interval

ROOT = Path(__file__).resolve().parents[1]
MODULES = [
    "engines/realign.py",
    "engines/cache.py",
    "engines/forward.py",
    "engines/rollout.py",
    "engines/transformers.py",
    "methods/loop.py",
]
TESTS = ["test_realign", "test_dtypes_devices", "test_engine", "test_evaluate", "test_vllm_engine"]
TESTS += ["test_trace", "test_hetero"]
KILLED = {1, 3, 24, 36, 152, 255, -24}  # test failure, or timeout


def prepare(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(
        ROOT / "src" / "latentmas", work / "latentmas", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(ROOT / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    others = sorted(
        f"latentmas/{p.relative_to(work / 'latentmas')}"
        for p in (work / "latentmas").rglob("*")
        if p.is_file()
        and str(p.relative_to(work / "latentmas")) not in MODULES
        and "__pycache__" not in p.parts
    )
    toml = json.dumps  # a JSON list of strings is a TOML array
    (work / "pyproject.toml").write_text(
        f"""[tool.mutmut]
source_paths = {toml([f"latentmas/{m}" for m in MODULES])}
pytest_add_cli_args = ["-x", "-q", "-p", "no:cacheprovider"]
pytest_add_cli_args_test_selection = {toml([f"tests/{t}.py" for t in TESTS])}
also_copy = {toml(["tests", *others])}
timeout_constant = 20

[tool.pytest.ini_options]
testpaths = ["tests"]
addopts = "-m 'not slow and not network'"
markers = ["slow: slow", "network: network"]
"""
    )


def exit_codes(work: Path) -> dict[str, int | None]:
    codes: dict[str, int | None] = {}
    for meta in (work / "mutants" / "latentmas").rglob("*.meta"):
        codes.update(json.loads(meta.read_text())["exit_code_by_key"])
    return codes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sample", type=int, default=300, help="mutants to run (uniform random sample)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/latentmas-mutation"))
    args = parser.parse_args()
    if shutil.which("mutmut") is None:
        print("error: mutmut is not installed (pip install mutmut==3.8.1)", file=sys.stderr)
        return 2
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    prepare(args.work)
    # One named mutant: mutmut generates them all and maps tests to functions, runs one.
    generate = ["mutmut", "run", "--max-children", "1", "latentmas.engines.realign.x_fingerprint__mutmut_1"]
    subprocess.run(generate, cwd=args.work, env=env, check=True, capture_output=True)
    keys = sorted(exit_codes(args.work))
    random.Random(args.seed).shuffle(keys)
    sample = keys[: args.sample]
    subprocess.run(["mutmut", "run", "--max-children", "1", *sample], cwd=args.work, env=env, check=True)

    codes = exit_codes(args.work)
    totals, killed = Counter(), Counter()
    for key in sample:
        module = ".".join(key.split(".")[1:-1])  # latentmas.engines.cache.x_f__mutmut_1 -> engines.cache
        totals[module] += 1
        killed[module] += codes.get(key) in KILLED
    totals["all"], killed["all"] = sum(totals.values()), sum(killed.values())
    print(f"\n{len(sample)} of {len(keys)} mutants (seed {args.seed})\n")
    print("| module | killed | share | 95% CI |\n|---|---|---|---|")
    for module in [*sorted(m for m in totals if m != "all"), "all"]:
        low, high = wilson_interval(killed[module], totals[module])
        share = killed[module] / totals[module]
        print(f"| {module} | {killed[module]}/{totals[module]} | {share:.0%} | [{low:.0%}, {high:.0%}] |")
    print("\nsurvivors: cd", args.work, "&& mutmut results")
    return 0


if __name__ == "__main__":
    run_script(main)
