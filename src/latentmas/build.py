"""`build_solver(spec)`: the one place that decides which method class and engine a run gets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import LatentMASError
from .methods import LatentMAS, Method, SingleAgent, TextMAS
from .models import LoadedModel, gguf_for, load_model
from .spec import RunSpec


def load_for(spec: RunSpec) -> LoadedModel:
    """The model a spec names, on its device, in its dtype."""
    return load_model(spec.model, device=spec.device, dtype=spec.dtype, chat_template=spec.chat_template)


def build_solver(spec: RunSpec, lm: LoadedModel | None = None) -> Method:
    """The method a spec describes, on `lm` (loaded from the spec when not given).

    The only place that decides which class runs: heterogeneous agents, or one of the
    three methods on the transformers, llama.cpp or vLLM engine.
    """
    if lm is None:
        lm = load_for(spec)
    if spec.agent_models:
        return _heterogeneous(spec, lm)
    engine: Any = lm
    if spec.engine == "vllm":
        from .engines.vllm import VLLMEngine

        engine = VLLMEngine(lm, spec.vllm)
    elif spec.engine == "llamacpp":
        from .engines.llamacpp import LlamaCppEngine

        engine = LlamaCppEngine(lm, _gguf_file(lm))
    if spec.method == "single":
        return SingleAgent(engine, spec.sampling)
    if spec.method == "text_mas":
        return TextMAS(engine, spec.sampling, spec.team, spec.handoff.message_tokens)
    method = LatentMAS(
        engine, spec.sampling, spec.team, spec.latent_steps, spec.memory, spec.handoff, spec.question_once
    )
    if spec.trace:
        from .inspection.trace import Tracing

        method.watch(Tracing(lm))
    return method


def _gguf_file(lm: LoadedModel) -> Path:
    """The GGUF file the loaded model was converted from (the model at hand, whatever
    `spec.model` says): the one lookup `models` does for every engine."""
    path = gguf_for(lm.gguf_name) if lm.gguf_name else None
    if path is None:
        raise LatentMASError("--engine llamacpp needs a GGUF model (a .gguf file or a built-in model)")
    return path


def _heterogeneous(spec: RunSpec, lm: LoadedModel) -> Method:
    """HeteroMAS for --agent-models: latent handoff for latent_mas, text handoff for text_mas."""
    from .methods.hetero import HeteroMAS, parse_agent_models

    roles = [agent.name for agent in spec.team.agents]
    names = parse_agent_models(spec.agent_models or "", roles)
    loaded = {lm.name: lm}
    models = {}
    for role in roles:
        name = names.get(role)
        if name is not None and name not in loaded:
            other = load_model(
                name, device=str(lm.device.type), dtype=lm.model.dtype, chat_template=spec.chat_template
            )
            loaded[name] = loaded.setdefault(other.name, other)
        models[role] = loaded[name] if name is not None else lm
    return HeteroMAS(models, spec.sampling, spec.team, spec.latent_steps, spec.handoff)
