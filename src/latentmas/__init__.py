"""latentmas: LLM agents that collaborate in latent space instead of in text.

from latentmas import load_model, LatentMAS
lm = load_model()                      # the embedded SmolLM2-135M-Instruct
answer = LatentMAS(lm, latent_steps=10).solve(["What is 17 * 3?"])[0]
print(answer.final_text, answer.output_tokens)
"""

from .engine import Sampling
from .errors import LatentMASError
from .evaluate import QuestionResult, Summary, evaluate
from .methods import AgentStep, Answer, LatentMAS, SingleAgent, TextMAS, make_method
from .models import LoadedModel, load_model
from .tasks import get_task

__all__ = [
    "AgentStep",
    "Answer",
    "LatentMAS",
    "LatentMASError",
    "LoadedModel",
    "QuestionResult",
    "Sampling",
    "SingleAgent",
    "Summary",
    "TextMAS",
    "evaluate",
    "get_task",
    "load_model",
    "make_method",
]
__version__ = "0.1.0"
