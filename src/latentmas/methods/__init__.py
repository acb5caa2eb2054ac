"""The agent loop (`loop`) and the methods that configure it (`solvers`, `hetero`)."""

from .loop import AgentStep, Answer, Method, Observer, ObserverFactory, SolveCancelled
from .solvers import METHODS, LatentMAS, SingleAgent, TextMAS

__all__ = [
    "METHODS",
    "AgentStep",
    "Answer",
    "LatentMAS",
    "Method",
    "Observer",
    "ObserverFactory",
    "SingleAgent",
    "SolveCancelled",
    "TextMAS",
]
