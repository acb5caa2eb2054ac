"""Show a trace: a rich terminal view, and one self-contained HTML page with plots."""

from __future__ import annotations

import base64
import html
import io

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .trace import Trace


def _tokens(pairs: list[tuple[str, float]], n: int = 3) -> Text:
    return Text("  ".join(f"{tok!r} {score:.2f}" for tok, score in pairs[:n]))


def method_label(method: dict) -> str:
    """A run's description as one line, e.g. `latent_mas topology=sequential latent_steps=10`."""
    rest = " ".join(f"{k}={v}" for k, v in method.items() if k != "method")
    return f"{method.get('method', '?')} {rest}".strip()


def print_trace(trace: Trace, console: Console) -> None:
    """Every string from the model or the user is a `Text`: shown as it is, never read as markup."""
    console.print(Text("question", "bold") + ": " + Text(trace.question), highlight=False)
    console.print(
        Text("model", "bold")
        + ": "
        + Text(trace.model)
        + "   "
        + Text("method", "bold")
        + ": "
        + Text(method_label(trace.method))
    )
    for agent in trace.agents:
        if not agent.steps:
            console.print(Text(agent.role, "bold") + ": no latent steps (decodes the answer)")
            continue
        table = Table(title=Text(f"{agent.role}: {len(agent.steps)} latent steps"), title_justify="left")
        for column in ("step", "norm", "cos prev", "cos first", "entropy"):
            table.add_column(column, justify="right")
        table.add_column("logit lens (top 3)")
        table.add_column("nearest input tokens (top 3)")
        for s in agent.steps:
            prev = "-" if s.cos_prev is None else f"{s.cos_prev:.3f}"
            table.add_row(
                str(s.step),
                f"{s.norm:.1f}",
                prev,
                f"{s.cos_first:.3f}",
                f"{s.entropy:.2f}",
                _tokens(s.logit_lens),
                _tokens(s.nearest),
            )
        console.print(table)
    console.print(Text("final answer", "bold green") + ": " + Text(trace.final_text), highlight=False)


def _figure_png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def _plots(trace: Trace) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thinking = [a for a in trace.agents if a.steps]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    images = {}

    fig, (ax_norm, ax_drift) = plt.subplots(1, 2, figsize=(11, 3.6))
    for i, agent in enumerate(thinking):
        steps = [s.step for s in agent.steps]
        color = colors[i % len(colors)]
        ax_norm.plot(steps, [s.norm for s in agent.steps], marker="o", ms=3, color=color, label=agent.role)
        ax_drift.plot(
            steps, [s.cos_first for s in agent.steps], color=color, label=f"{agent.role}: cos to first"
        )
        prev = [(s.step, s.cos_prev) for s in agent.steps if s.cos_prev is not None]
        if prev:
            ax_drift.plot(*zip(*prev), color=color, ls="--", label=f"{agent.role}: cos to previous")
    ax_norm.set(title="Hidden-state norm per latent step", xlabel="latent step", ylabel="norm")
    ax_drift.set(title="Drift: cosine similarity", xlabel="latent step", ylabel="cosine", ylim=(-0.1, 1.05))
    ax_norm.legend(fontsize=7)
    ax_drift.legend(fontsize=6)
    images["norm_drift"] = _figure_png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7.5, 6))
    for i, agent in enumerate(trace.agents):
        color = colors[i % len(colors)]
        if agent.prompt_pca:
            xs, ys = zip(*agent.prompt_pca)
            ax.scatter(xs, ys, s=8, color=color, alpha=0.25, label=f"{agent.role} prompt tokens")
        points = [s.pca for s in agent.steps if s.pca is not None]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, "-o", ms=4, color=color, label=f"{agent.role} latent thoughts")
            ax.annotate("start", points[0], fontsize=7, color=color)
    ax.set(title="PCA of latent thoughts and prompt-token embeddings", xlabel="PC 1", ylabel="PC 2")
    ax.legend(fontsize=7)
    images["pca"] = _figure_png(fig)
    plt.close(fig)
    return images


def trace_html(trace: Trace) -> str:
    """One page, no external resources: images are inlined as data URLs."""
    images = _plots(trace)
    esc = html.escape
    sections = []
    for agent in trace.agents:
        if not agent.steps:
            continue
        rows = "".join(
            f"<tr><td>{s.step}</td><td>{s.norm:.1f}</td>"
            f"<td>{'-' if s.cos_prev is None else f'{s.cos_prev:.3f}'}</td><td>{s.cos_first:.3f}</td>"
            f"<td>{s.entropy:.2f}</td>"
            f"<td>{esc(', '.join(f'{t!r} {p:.2f}' for t, p in s.logit_lens))}</td>"
            f"<td>{esc(', '.join(f'{t!r} {c:.2f}' for t, c in s.nearest))}</td></tr>"
            for s in agent.steps
        )
        sections.append(
            f"<h3>{esc(agent.role)}</h3><table><tr><th>step</th><th>norm</th><th>cos prev</th>"
            f"<th>cos first</th><th>entropy</th><th>logit lens</th><th>nearest input tokens</th></tr>"
            f"{rows}</table>"
        )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>latentmas trace</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; font-size: 12px; margin-bottom: 1em; }}
td, th {{ border: 1px solid #ccc; padding: 2px 6px; text-align: left; }}
th {{ background: #f3f3f3; }}
.answer {{ background: #eef8ee; padding: 0.6em; white-space: pre-wrap; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>What the agents thought</h1>
<p><b>Question:</b> {esc(trace.question)}</p>
<p><b>Model:</b> {esc(trace.model)} &nbsp; <b>Method:</b> {esc(method_label(trace.method))}</p>
<h2>Norm and drift</h2><img alt="norm and drift" src="data:image/png;base64,{images["norm_drift"]}">
<h2>Latent trajectories</h2><img alt="PCA map" src="data:image/png;base64,{images["pca"]}">
<h2>Logit lens</h2>{"".join(sections)}
<h2>Final answer</h2><div class="answer">{esc(trace.final_text)}</div>
</body></html>
"""
