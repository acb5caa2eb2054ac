"""Backends behind one protocol (`protocol.Engine`): transformers, llama.cpp and vLLM.

cache.py      the shared KV cache every agent appends to (SharedMemory)
forward.py    one forward pass into it: padding, positions, masks, the shared prompt prefix
views.py      what each layer sees of the memory (per-layer masks, re-entry at a layer)
relay.py      what a later agent is handed at each handoff (layer-selective relay, filter)
realign.py    hidden state -> input embedding (ridge / norm / soft), fitted once per model
rollout.py    the latent loop and the rules that stop it (drift and entropy guards)
sampling.py   the one sampler every engine chooses tokens with
transformers.py, llamacpp.py, vllm.py   the engines (llama.cpp and vLLM are optional)
"""

from .protocol import CAPABILITIES, ENGINES, Decoding, Engine, Reading, StateCallback, TokenCallback, require
from .rollout import LatentSteps
from .sampling import Sampling
from .transformers import TransformersEngine
from .views import MemoryView

__all__ = [
    "CAPABILITIES",
    "Decoding",
    "ENGINES",
    "Engine",
    "Reading",
    "LatentSteps",
    "MemoryView",
    "Sampling",
    "StateCallback",
    "TokenCallback",
    "TransformersEngine",
    "require",
]
