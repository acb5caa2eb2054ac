"""Run records: what decides a run's answers (`run.json`), and where they were computed.

A results folder resumes only a run with the same record. The record is the run's
`RunSpec.record()` (the spec's own dump, schema 2) plus the task, the data's digest and the
model's; `migrate` reads every earlier shape of run.json (schema 1: the method's description
of itself, written before specs were records) as the record its run would write today.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path

from ..errors import LatentMASError
from ..methods import Method
from ..models import cpu_name, model_digest
from ..spec import RECORD_SCHEMA, RunSpec
from .tasks import Task

# Settings recorded only since a later release. `dtype` has the value every earlier run
# had (a model on a CPU always computed in float32); the others are taken as they are now,
# once, and enforced from then on.
_RECORDED_LATER = {"dtype": "float32"}
_UNRECORDED_BEFORE = ("engine", "device", "data", "model_digest")


def data_source(data: str | None) -> str:
    """What a run's questions came from: a file (its name and content digest: the same file
    in another checkout still resumes), the hub, or the task's default source."""
    if data is None or data == "hub":
        return data or "default"
    path = Path(data).expanduser().resolve()
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:  # a folder (BIG-bench's tasks): every file's name and content
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with file.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return f"{path.name} sha256:{digest.hexdigest()[:16]}"


def method_spec(method: Method) -> RunSpec:
    """The spec a built method answers to (however it was built: CLI, server, Python)."""
    lm = method.lm
    return RunSpec(
        **method.describe(),
        model=lm.name,
        dtype=lm.dtype,
        device=lm.device.type,
        engine=method.engine.name,
        **asdict(method.sampling),
    )


def run_record(method: Method, task: Task, data: str | None) -> dict:
    """Everything that decides a run's answers; a folder resumes only a run with the same."""
    record = method_spec(method).record()
    return record | {"task": task.name, "data": data_source(data), "model_digest": model_digest(method.lm)}


def migrate(before: dict, now: dict) -> dict:
    """A run.json of any earlier shape as the record its run would write today (`now`: this
    run's record, which lends the settings earlier runs did not record yet). A shape that no
    longer parses is returned as it is, and so refused as another run's."""
    if before.get("schema") == RECORD_SCHEMA:
        return before
    recorded_later = {k: v for k, v in _RECORDED_LATER.items() if k in now}
    taken_now = {k: now[k] for k in _UNRECORDED_BEFORE if k in now and k not in before}
    old = {**recorded_later, **taken_now, **before}
    identity = {k: old.pop(k) for k in ("task", "data", "model_digest") if k in old}
    if identity.get("task") == "humaneval_plus" and identity.get("data", "default") == "default":
        identity["task"] = "humaneval"  # what ran: HumanEval's own tests (EvalPlus's need a file)
    if old.get("method") == "hetero_mas":  # then its own name; now the method it ran
        agents = old.pop("agents", {})
        old.pop("maps", None)
        text = old.get("handoff") == "text"
        old |= {"method": "text_mas" if text else "latent_mas", "handoff": "text" if text else "latent"}
        old["agent_models"] = ",".join(f"{role}={model}" for role, model in agents.items())
    try:
        return RunSpec(**old).record() | identity
    except LatentMASError:
        return before


def check_same_run(out_dir: Path, settings: dict) -> None:
    """Refuse to resume into a folder whose results came from other settings; (re)write
    run.json as this run's record (an earlier shape is migrated by being rewritten)."""
    path = out_dir / "run.json"
    if path.is_file():
        try:
            before = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            before = None
        if not isinstance(before, dict):
            raise LatentMASError(
                f"{path} is corrupt, so the results beside it cannot be checked against this run; "
                "repair or remove it, or choose another --out"
            )
        before = migrate(before, settings)
        if before != settings:
            changed = sorted(k for k in settings.keys() | before.keys() if before.get(k) != settings.get(k))
            shown = "; ".join(f"{k}: {before.get(k)!r} then, {settings.get(k)!r} now" for k in changed)
            raise LatentMASError(
                f"{out_dir} holds results of a run with other settings ({shown}); "
                "choose another --out to start a new run"
            )
    path.write_text(json.dumps(settings, indent=2) + "\n")


def environment() -> dict:
    """Where answers are computed. Not a setting that stops a resume: the same weights answer
    alike on any machine in float32, but bfloat16 products round differently on another CPU's
    kernels (AMX against AVX-512 BF16), so a run logs each machine and library set it met."""
    import torch
    import transformers

    return {
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "latentmas": version("latentmas"),
    }


def log_environment(out_dir: Path, answered_before: int) -> None:
    """Append this environment to `environment.jsonl` when it differs from the last one there."""
    path = out_dir / "environment.jsonl"
    now = environment()
    last = read_environments(out_dir)[-1:]
    if last and {k: last[0].get(k) for k in now} == now:
        return
    with path.open("a") as f:
        f.write(json.dumps({**now, "answered_before": answered_before}) + "\n")


def read_environments(out_dir: Path) -> list[dict]:
    """The environments a run met, in order (empty for a run from before they were logged)."""
    path = out_dir / "environment.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut off by a killed run; the next start writes a whole one
        if isinstance(row, dict):
            rows.append(row)
    return rows
