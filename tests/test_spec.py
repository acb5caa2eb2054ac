"""One run description: every option is typed, bounded and listed once (in RunSpec or its
handoff's config), and the command line, the server and the spec accept and refuse the same
values. The values tried are read off each field's own type and bounds."""

from __future__ import annotations

import typing
from types import SimpleNamespace

import pytest
import typer
from pydantic import ValidationError
from typer.testing import CliRunner

from latentmas.engines import LatentSteps
from latentmas.errors import LatentMASError
from latentmas.handoffs import (
    LatentConfig,
    ReentryConfig,
    StatesConfig,
    TextConfig,
    TrainedConfig,
    ViewConfig,
)
from latentmas.options import spec_options
from latentmas.serve.server import REQUEST_FIELDS, ChatRequest, request_spec
from latentmas.spec import RunSpec, flat_option_fields

# What a field needs beside it to mean anything (a message cap caps text_mas's messages).
CONTEXT = {"message_tokens": {"method": "text_mas"}}
# The server's own name for a spec field (OpenAI's), where it differs.
SERVER_NAMES = {
    "max_new_tokens": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
}


def bound(info, *names):
    return next(
        (getattr(m, n) for m in info.metadata for n in names if getattr(m, n, None) is not None), None
    )


def candidates(name: str, info) -> list:
    """Values to try for a field: inside and outside its bounds, each choice and a non-choice."""
    kind = info.annotation
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if typing.get_origin(kind) is typing.Literal:
        return [*typing.get_args(kind), "nonsense"]
    if name == "latent_steps":
        return [0, 5, "auto", "auto:7", -1, "lots", 2000]
    if name == "handoff":
        return ["latent", "reentry:thoughts_from=0.25", "telepathy", "reentry:thoughts_from=2"]
    if name == "team":
        return ["sequential", "hierarchical", "nonsense"]
    if args and typing.get_origin(args[0]) is typing.Literal:
        return [*typing.get_args(args[0]), "nonsense"]
    base = args[0] if args else kind
    if base is bool:
        return [True, False]
    if base is str:
        return ["anything"]
    low, high = bound(info, "ge", "gt"), bound(info, "le", "lt")
    values = ["abc"]
    step = 1 if base is int else 0.01
    for edge, outside in ((low, -step), (high, step)):
        if edge is not None:
            values += [edge, edge + outside]
    if low is None and high is None:
        values.append(3 if base is int else 0.5)
    elif low is not None and high is not None:
        values.append(base((low + high) / 2) if base is int else (low + high) / 2)
    return values


def fields() -> list[tuple[str, object]]:
    spec = [
        (n, i) for n, i in RunSpec.model_fields.items() if (i.json_schema_extra or {}).get("cli") is not False
    ]
    return spec + list(flat_option_fields().items())


CASES = [(name, value) for name, info in fields() for value in candidates(name, info)]


def accepted_by_spec(name: str, value) -> bool:
    try:
        RunSpec(**CONTEXT.get(name, {}), **{name: value})
    except LatentMASError:
        return False
    return True


@pytest.fixture(scope="module")
def command_line():
    app = typer.Typer()

    @app.command()
    @spec_options()
    def show(*, spec: RunSpec) -> None:
        pass

    runner = CliRunner()

    def accepts(name: str, value) -> bool:
        flag = "--" + name.replace("_", "-")
        args = [flag] if value is True else [] if value is False else [flag, str(value)]
        for key, context in CONTEXT.get(name, {}).items():
            args += ["--" + key.replace("_", "-"), context]
        result = runner.invoke(app, args)
        if result.exception is not None and not isinstance(result.exception, SystemExit | LatentMASError):
            raise result.exception
        return result.exit_code == 0 and result.exception is None

    return accepts


def accepted_by_server(name: str, value) -> bool:
    state = SimpleNamespace(
        lm=SimpleNamespace(name="m", dtype="float32"),
        engine="transformers",
        vllm=SimpleNamespace(gpu_share=0.45, cpu_kv_gib=2, tensor_parallel=1),
        default_max_tokens=256,
    )
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        **CONTEXT.get(name, {}),
        SERVER_NAMES.get(name, name): value,
    }
    try:
        request_spec(ChatRequest.model_validate(body), state)
    except (ValidationError, LatentMASError):
        return False
    return True


@pytest.mark.parametrize(("name", "value"), CASES, ids=[f"{n}={v!r}" for n, v in CASES])
def test_the_command_line_and_the_spec_agree(command_line, name, value):
    assert command_line(name, value) == accepted_by_spec(name, value)


# A request never names a server's file: the adapter is the server's (`serve --adapter`).
SERVED = [
    (n, v)
    for n, v in CASES
    if n in (*REQUEST_FIELDS, "team", *flat_option_fields(), *SERVER_NAMES) and n != "adapter"
]


@pytest.mark.parametrize(("name", "value"), SERVED, ids=[f"{n}={v!r}" for n, v in SERVED])
def test_the_server_and_the_spec_agree(name, value):
    if name == "max_new_tokens" and value is None:
        pytest.skip("the server's default budget")
    assert accepted_by_server(name, value) == accepted_by_spec(name, value)


def test_the_walk_tries_both_verdicts_for_every_field():
    """Each field has a value the spec takes and (but for free text and flags) one it refuses."""
    for name, info in fields():
        verdicts = {accepted_by_spec(name, value) for value in candidates(name, info)}
        free = info.annotation in (bool, str, str | None)
        assert verdicts == ({True} if free else {True, False}), name


def test_the_server_accepts_auto_latent_steps():
    assert accepted_by_server("latent_steps", "auto:12")
    body = {"messages": [{"role": "user", "content": "hi"}], "latent_steps": "auto"}
    assert ChatRequest.model_validate(body).latent_steps == LatentSteps(40, auto=True)


@pytest.mark.parametrize(
    ("flat", "expected"),
    [
        ({}, LatentConfig()),
        ({"realign": "none"}, LatentConfig(realign="none")),
        ({"thought_weight": 0.5}, ViewConfig(thought_weight=0.5)),
        ({"relay_layers": 0.3}, ViewConfig(relay_layers=0.3)),
        ({"thoughts_from": 0.5}, ViewConfig(thoughts_from=0.5)),
        ({"thoughts_from": 0.5, "thoughts_enter": True}, ReentryConfig(thoughts_from=0.5, realign="ridge")),
        ({"thoughts_from": 0.5, "thoughts_enter": True, "realign": "none"}, ReentryConfig(thoughts_from=0.5)),
        ({"max_thought_entropy": 3.5}, LatentConfig(max_thought_entropy=3.5)),
        ({"handoff": "states"}, StatesConfig()),
        ({"handoff": "states", "message_tokens": 16}, StatesConfig(message_tokens=16)),
        ({"handoff": "reentry"}, ReentryConfig()),
        ({"method": "text_mas", "message_tokens": 64}, TextConfig(message_tokens=64)),
        ({"adapter": "a.safetensors"}, TrainedConfig(adapter="a.safetensors")),
        # a name that needs an option given apart: `--handoff trained --adapter FILE`
        ({"handoff": "trained", "adapter": "a.safetensors"}, TrainedConfig(adapter="a.safetensors")),
        (
            {"handoff": "reentry:thoughts_from=0.25", "realign": "ridge"},
            ReentryConfig(thoughts_from=0.25, realign="ridge"),
        ),
        ({"method": "single"}, None),
    ],
)
def test_the_flags_from_before_handoffs_had_names_map_onto_configs(flat, expected):
    assert RunSpec(**flat).handoff == expected


def test_a_record_is_the_specs_own_dump_with_a_schema():
    record = RunSpec(method="latent_mas", latent_steps="auto:9", handoff="reentry").record()
    assert record["schema"] == 2 and record["latent_steps"] == "auto:9"
    assert record["handoff"] == ReentryConfig().model_dump()
    assert "trace" not in record and "vllm_gpu_share" not in record
    assert RunSpec(**{k: v for k, v in record.items() if k != "schema"}).record() == record
    assert "latent_steps" not in RunSpec(method="text_mas").record()  # a text run has no thoughts
