"""latentmas: LLM agents that collaborate in latent space instead of in text.

from latentmas import load_model, LatentMAS
lm = load_model()                      # the embedded SmolLM2-135M-Instruct
answer = LatentMAS(lm, latent_steps=10).solve(["What is 17 * 3?"])[0]
print(answer.final_text, answer.output_tokens)
"""

from importlib.metadata import version

from .build import build_solver
from .engines import LatentSteps, Sampling
from .errors import LatentMASError
from .evaluation.evaluate import QuestionResult, Summary, evaluate
from .evaluation.tasks import get_task
from .handoffs import HandoffConfig, register
from .methods import AgentStep, Answer, LatentMAS, SingleAgent, TextMAS
from .models import LoadedModel, load_model
from .spec import RunSpec

__all__ = [
    "AgentStep",
    "Answer",
    "HandoffConfig",
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
    "register",
]
__version__ = version("latentmas")
