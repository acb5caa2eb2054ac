"""Experiment 12 of docs/quality.md (not in the package): latent steps per role.

The final agent's premature end of turn grows with the number of thoughts in context. With
the same budget of about ten thoughts, does it matter where they sit? Only the planner
thinks (planner=10, critic=0, refiner=0), against m = 3 for every agent (9 thoughts):

    python benchmarks/experiments/per_role_latent_steps.py planner=10,critic=0,refiner=0 \\
        --offset 1000 --limit 24 --configs latent_mas --out benchmarks/results/experiment-planner-only
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import quality  # noqa: E402

from latentmas import methods  # noqa: E402

steps = {role: int(m) for role, m in (item.split("=") for item in sys.argv[1].split(","))}
agent = methods.Method._agent


def per_role(self, engine, role, memory, prompts, latent_steps, *rest):
    return agent(self, engine, role, memory, prompts, steps.get(role.name, latent_steps), *rest)


methods.Method._agent = per_role
sys.exit(quality.main(sys.argv[2:]))
