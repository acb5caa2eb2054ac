"""latentmas: LLM agents that collaborate in latent space instead of in text.

from latentmas import load_model, LatentMAS
lm = load_model()                      # the embedded SmolLM2-135M-Instruct
answer = LatentMAS(lm, latent_steps=10).solve(["What is 17 * 3?"])[0]
print(answer.final_text, answer.output_tokens)
"""

from .engine import Sampling
from .errors import LatentMASError
from .evaluate import QuestionResult, Summary, evaluate
from .methods import AgentStep, Answer, LatentMAS, LatentSteps, SingleAgent, TextMAS
from .models import LoadedModel, load_model
from .spec import RunSpec, build_solver
from .tasks import get_task

__all__ = [
    "AgentStep",
    "Answer",
    "LatentMAS",
    "LatentMASError",
    "LatentSteps",
    "LoadedModel",
    "QuestionResult",
    "RunSpec",
    "Sampling",
    "SingleAgent",
    "Summary",
    "TextMAS",
    "build_solver",
    "evaluate",
    "get_task",
    "load_model",
]
__version__ = "0.1.0"
