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
from .methods import MAX_LATENT_STEPS, Answer, make_method
from .models import load_model
from .tasks import get_task

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
StepsOpt = Annotated[
    int,
    typer.Option(
        "--latent-steps",
        min=0,
        max=MAX_LATENT_STEPS,
        help="Latent thoughts per non-final agent (latent_mas).",
    ),
]
MemoryOpt = Annotated[
    Memory, typer.Option(help="latent_mas: keep the whole shared cache, or only the latent thoughts.")
]
RealignOpt = Annotated[
    Realign, typer.Option(help="Map hidden states back to input embeddings: ridge, norm or none.")
]
MaxTokOpt = Annotated[
    int, typer.Option("--max-new-tokens", min=1, max=32768, help="Decoding budget per text agent.")
]
TempOpt = Annotated[float, typer.Option(min=0.0, max=10.0, help="0 = greedy.")]
TopPOpt = Annotated[float, typer.Option("--top-p", min=0.0, max=1.0)]
SeedOpt = Annotated[int, typer.Option(min=0)]
DeviceOpt = Annotated[Device, typer.Option(help="Where the model runs.")]
TemplateOpt = Annotated[
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


@app.command()
def run(
    question: Annotated[str, typer.Argument(help="The question to answer.")],
    model: ModelOpt = None,
    method: MethodOpt = MethodName.latent_mas,
    topology: TopologyOpt = Topology.sequential,
    latent_steps: StepsOpt = 10,
    memory: MemoryOpt = Memory.full,
    realign: RealignOpt = Realign.ridge,
    max_new_tokens: MaxTokOpt = 256,
    temperature: TempOpt = 0.0,
    top_p: TopPOpt = 1.0,
    seed: SeedOpt = 0,
    device: DeviceOpt = Device.auto,
    chat_template: TemplateOpt = None,
) -> None:
    """Answer one question and show what each agent did."""
    if not question.strip():
        raise LatentMASError("the question is empty")
    with console.status("loading model"):
        lm = load_model(model, device=device.value, chat_template=chat_template)
    sampling = Sampling(max_new_tokens, temperature, top_p, seed)
    solver = make_method(
        method.value,
        lm,
        sampling,
        topology=topology.value,
        latent_steps=latent_steps,
        memory=memory.value,
        realign=realign.value,
    )
    with console.status(f"{method.value} on {lm.name}"):
        (answer,) = solver.solve([question])
    _print_answer(answer)


@app.command("eval")
def eval_(
    task: Annotated[str, typer.Option(help="Benchmark to run.")] = "gsm8k",
    data: Annotated[
        str | None,
        typer.Option(help="JSONL file, or 'hub' for the full hub dataset; default: the bundled sample."),
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N questions.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=1024)] = 1,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (results.jsonl, summary.json); reruns resume.")
    ] = None,
    model: ModelOpt = None,
    method: MethodOpt = MethodName.latent_mas,
    topology: TopologyOpt = Topology.sequential,
    latent_steps: StepsOpt = 10,
    memory: MemoryOpt = Memory.full,
    realign: RealignOpt = Realign.ridge,
    max_new_tokens: MaxTokOpt = 256,
    temperature: TempOpt = 0.0,
    top_p: TopPOpt = 1.0,
    seed: SeedOpt = 0,
    device: DeviceOpt = Device.auto,
    chat_template: TemplateOpt = None,
) -> None:
    """Run a method on a benchmark; write results.jsonl and summary.json."""
    bench = get_task(task)
    examples = bench.load(data)[:limit]
    out = out or Path("runs") / f"{task}-{method.value}"
    with console.status("loading model"):
        lm = load_model(model, device=device.value, chat_template=chat_template)
    sampling = Sampling(max_new_tokens, temperature, top_p, seed)
    solver = make_method(
        method.value,
        lm,
        sampling,
        topology=topology.value,
        latent_steps=latent_steps,
        memory=memory.value,
        realign=realign.value,
    )
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("acc {task.fields[acc]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task(f"{method.value} · {task}", total=len(examples), acc="-")
        tally = {"n": 0, "correct": 0}

        def on_batch(results):
            tally["n"] += len(results)
            tally["correct"] += sum(r.correct for r in results)
            progress.update(bar, advance=len(results), acc=f"{tally['correct'] / tally['n']:.1%}")

        summary = evaluate(solver, bench, examples, out, batch_size, on_batch)
    table = Table(title=f"{summary.task} · {summary.model}")
    for column in (
        "method",
        "n",
        "accuracy",
        "output tokens (mean)",
        "input tokens (mean)",
        "latent steps (mean)",
        "seconds",
    ):
        table.add_column(column, justify="right")
    table.add_row(
        summary.method,
        str(summary.n),
        f"{summary.accuracy:.1%}",
        f"{summary.output_tokens_mean:.1f}",
        f"{summary.input_tokens_mean:.1f}",
        f"{summary.latent_steps_mean:.1f}",
        f"{summary.seconds_total:.1f}",
    )
    console.print(table)
    console.print(f"results in {out}/results.jsonl, summary in {out}/summary.json")


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
