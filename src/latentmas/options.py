"""RunSpec's fields, and every handoff's options, as typer options: `run` and `eval` declare
none of them, and no bound or choice list is written here.

Choices become an Enum so typer lists them in --help; bounds are left to `RunSpec`, so the
command line accepts and refuses exactly what the spec (and the server) do. The command
receives the values as one validated `RunSpec`.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from enum import Enum
from typing import Annotated, Any, Literal

import typer
from pydantic.fields import FieldInfo

from .errors import LatentMASError, OptionError
from .spec import LEGACY, RunSpec, flat_option_fields

_SHORT_FLAGS = {"model": ["-m"]}
_METAVARS = {"latent_steps": "N|auto[:MAX]", "handoff": "NAME[:key=value,...]", "team": "NAME|FILE.yaml"}
_AS_TEXT = ("latent_steps", "handoff", "team")  # parsed by RunSpec from their text


def _plain(annotation: Any) -> Any:
    """`X | None` -> X (typer reads None as "not given")."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = [a for a in typing.get_args(annotation) if a is not type(None)]
        return kinds[0] if len(kinds) == 1 else str
    return annotation


def _option(name: str, info: FieldInfo, default: Any) -> tuple[Any, Any]:
    """A field as a typer option: (annotation, default)."""
    kind = str if name in _AS_TEXT else _plain(info.annotation)
    if typing.get_origin(kind) is Literal:  # an Enum makes typer list the choices
        kind = Enum(name.title().replace("_", ""), {c: c for c in typing.get_args(kind)}, type=str)
        default = None if default is None else kind(default)
    flags = ["--" + name.replace("_", "-"), *_SHORT_FLAGS.get(name, [])]
    option = typer.Option(*flags, help=info.description, metavar=_METAVARS.get(name))
    return Annotated[kind, option], default


def spec_fields(
    exclude: tuple[str, ...] = (), only: tuple[str, ...] | None = None
) -> dict[str, tuple[Any, Any]]:
    """Every option a run takes: RunSpec's fields at their defaults, then each handoff
    option and the legacy flags unset (None: the handoff's own default applies). `only`:
    just these RunSpec fields (no handoff options)."""
    fields = {}
    for name, info in RunSpec.model_fields.items():
        if name in exclude or (info.json_schema_extra or {}).get("cli") is False:
            continue
        if only is not None and name not in only:
            continue
        default = None if name in ("handoff", "team") else info.default  # unset: the spec's own default
        if name == "latent_steps":
            default = "10"
        fields[name] = _option(name, info, default)
    if only is not None:
        return fields
    for name, info in flat_option_fields().items():
        fields[name] = _option(name, info, None)
    for name, (kind, default, help_text) in LEGACY.items():
        fields[name] = _option(name, FieldInfo(annotation=kind, description=help_text), default)
    return fields


def spec_from_options(values: dict[str, Any]) -> RunSpec:
    """The command line's values (Enums, None for unset) as one validated RunSpec."""
    values = {k: v.value if isinstance(v, Enum) else v for k, v in values.items()}
    unset = set(flat_option_fields()) | {"handoff", "team", "topology"}
    try:
        return RunSpec(**{k: v for k, v in values.items() if not (k in unset and v is None)})
    except OptionError as exc:  # named as the flag the user typed
        raise LatentMASError(f"{exc.flag}: {exc.reason}") from None


def spec_options(*, exclude: tuple[str, ...] = (), only: tuple[str, ...] | None = None):
    """Give a command every run option; it receives them as `spec`, a validated RunSpec, or
    (a command with a `make_spec` parameter instead, such as `eval` over several methods)
    as `make_spec(**changes)`, which builds one from the options and `changes`."""

    def decorate(command):
        own = typing.get_type_hints(command, include_extras=True)
        signature = inspect.signature(command).parameters
        factory = "make_spec" in signature
        params = [
            p.replace(annotation=own[p.name])
            for p in signature.values()
            if p.name not in ("spec", "make_spec")
        ]
        fields = spec_fields(exclude, only)
        for name, (annotation, default) in fields.items():
            params.append(
                inspect.Parameter(
                    name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
                )
            )

        @functools.wraps(command)
        def wrapper(**kwargs):
            values = {name: kwargs.pop(name) for name in fields}
            if factory:
                return command(make_spec=lambda **changes: spec_from_options(values | changes), **kwargs)
            return command(spec=spec_from_options(values), **kwargs)

        wrapper.__signature__ = inspect.Signature(params)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate
