"""What the command line shows: each agent's work, progress over a benchmark, summaries.

Kept apart from `cli.py` so the commands only wire options to the library.
"""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from .evaluation.evaluate import Summary
from .methods import Answer


def verbatim(text: str, style: str = "") -> Text:
    """Text shown exactly as it is: never read as rich markup. (`rich.markup.escape` is not
    enough: it leaves a backslash before `[`, so model text's `\\[ x \\]` would lose its
    first backslash.)"""
    return Text(text, style=style)


def print_answer(console: Console, answer: Answer, title: str = "Agents") -> None:
    """A table of the agents (what each did, tokens, steps, seconds), then the answer;
    model text is printed verbatim (`arr[i]`, `[/y]` and `\\[x\\]` are text, not markup)."""
    table = Table(title=verbatim(title), show_lines=False)
    for column in ("agent", "did", "input tokens", "output tokens", "latent steps", "seconds"):
        table.add_column(column, justify="left" if column in ("agent", "did") else "right")
    for s in answer.agents:
        did = "thought in latent space" if s.mode == "latent" else "decoded text"
        cells = (s.input_tokens, s.output_tokens, s.latent_steps)
        table.add_row(verbatim(s.role), did, *map(str, cells), f"{s.seconds:.2f}")
    console.print(table)
    for step in answer.agents[:-1]:
        if step.text:
            console.print(verbatim(step.role, "bold") + ": " + verbatim(step.text) + "\n", highlight=False)
    console.print(verbatim("answer", "bold green") + ": " + verbatim(answer.final_text), highlight=False)


def summary_table(title: str, summaries: list[Summary]) -> Table:
    """One row per (task, method) of an eval."""
    table = Table(title=verbatim(title))
    columns = ("task", "method", "n", "accuracy", "output tokens", "input tokens", "latent steps", "seconds")
    for column in columns:
        table.add_column(column, justify="right")
    for sm in summaries:
        means = (sm.output_tokens_mean, sm.input_tokens_mean, sm.latent_steps_mean, sm.seconds_total)
        table.add_row(
            verbatim(sm.task),
            verbatim(sm.method),
            str(sm.n),
            f"{sm.accuracy:.1%}",
            *(f"{m:.1f}" for m in means),
        )
    return table


def with_progress(console: Console, evaluate: Callable, description: str) -> Callable:
    """`evaluate` with a progress bar that shows the running accuracy."""

    def run(solver, task, examples, *args, **kwargs):
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("acc {task.fields[acc]}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console) as progress:
            bar = progress.add_task(description, total=len(examples), acc="-")
            tally = {"n": 0, "correct": 0}

            def on_batch(results) -> None:
                tally["n"] += len(results)
                tally["correct"] += sum(r.correct for r in results)
                progress.update(bar, advance=len(results), acc=f"{tally['correct'] / tally['n']:.1%}")

            return evaluate(solver, task, examples, *args, on_batch=on_batch, **kwargs)

    return run
