"""RunSpec's fields as typer options, so `run` and `eval` declare none of them twice.

Each field's metadata (help, choices, bounds) becomes the option's; choices become an
Enum so typer lists them. The command receives the values as one validated `RunSpec`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from enum import Enum
from typing import Annotated, get_type_hints

import typer

from .errors import LatentMASError
from .methods import LatentSteps
from .spec import RunSpec


def _latent_steps(value: str | LatentSteps) -> LatentSteps:
    try:
        return LatentSteps.parse(value)
    except LatentMASError as exc:
        raise typer.BadParameter(str(exc)) from None


_SHORT_FLAGS = {"model": ["-m"]}
# Text -> a typed value, once, here at the edge: (parser, how --help names the value).
_PARSERS = {"latent_steps": (_latent_steps, "N|auto[:MAX]")}


def _option_for(f: dataclasses.Field, kind: type) -> tuple[object, object]:
    """A RunSpec field as a typer option: (annotation, default)."""
    meta, default = f.metadata, f.default
    bounds = {k: meta[k] for k in ("min", "max") if meta.get(k) is not None}
    if meta.get("choices"):  # an Enum makes typer list the choices in --help and errors
        kind = Enum(f.name.title().replace("_", ""), {c: c for c in meta["choices"]}, type=str)
        default = kind(default)
    flags = ["--" + f.name.replace("_", "-"), *_SHORT_FLAGS.get(f.name, [])]
    parser, metavar = _PARSERS.get(f.name, (None, None))
    option = typer.Option(*flags, help=meta["help"], parser=parser, metavar=metavar, **bounds)
    return Annotated[kind, option], default


def spec_options(*, exclude: tuple[str, ...] = ()):
    """Give a command every RunSpec field as an option; it receives them as `spec`."""

    def decorate(command):
        hints = get_type_hints(RunSpec)
        own = get_type_hints(command, include_extras=True)
        fields = [
            f for f in dataclasses.fields(RunSpec) if f.metadata.get("cli", True) and f.name not in exclude
        ]
        params = [p.replace(annotation=own[p.name]) for p in inspect.signature(command).parameters.values()]
        params = [p for p in params if p.name != "spec"]
        for f in fields:
            annotation, default = _option_for(f, hints[f.name])
            params.append(
                inspect.Parameter(
                    f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
                )
            )

        @functools.wraps(command)
        def wrapper(**kwargs):
            values = {f.name: kwargs.pop(f.name) for f in fields}
            values = {k: v.value if isinstance(v, Enum) else v for k, v in values.items()}
            return command(spec=RunSpec(**values), **kwargs)

        wrapper.__signature__ = inspect.Signature(params)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate
