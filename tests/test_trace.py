"""Latent inspection: traces record each thought, round-trip, change nothing, and render."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from latentmas import LatentMAS, LatentSteps, Sampling
from latentmas.errors import LatentMASError
from latentmas.evaluation.evaluate import TraceFile, vectors_dir
from latentmas.inspection.trace import Tracing, read_traces
from latentmas.inspection.view import trace_html

from .conftest import QUESTIONS

SAMPLING = Sampling(max_new_tokens=6)


@pytest.fixture(scope="module")
def traced(tiny):
    return LatentMAS(tiny, SAMPLING, latent_steps=4).watch(Tracing(tiny)).solve(QUESTIONS[:3])


def test_trace_records_every_agent_and_step(traced):
    trace = traced[0].trace
    assert [a.role for a in trace.agents] == ["planner", "critic", "refiner", "solver"]
    assert [len(a.steps) for a in trace.agents] == [4, 4, 4, 0]
    first, second = trace.agents[0].steps[:2]
    assert first.cos_prev is None and first.cos_first == pytest.approx(1.0, abs=1e-5)
    assert -1.0 <= second.cos_prev <= 1.0 and second.norm > 0
    assert len(first.logit_lens) == 5 and len(first.nearest) == 5
    probs = [p for _, p in first.logit_lens]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6
    assert first.entropy > 0 and first.pca is not None
    assert trace.final_text == traced[0].final_text
    assert trace.vectors["agent0_embedding"].shape == (4, 64)


def test_tracing_off_changes_no_answer(tiny, traced):
    plain = LatentMAS(tiny, SAMPLING, latent_steps=4).solve(QUESTIONS[:3])
    assert [a.final_text for a in plain] == [a.final_text for a in traced]
    assert all(a.trace is None for a in plain)


def test_trace_round_trips_with_the_same_numbers(traced, tmp_path):
    trace = traced[1].trace
    path = tmp_path / "t.json"
    trace.save(path, vectors=True)
    (again,) = read_traces(path)
    assert json.loads(json.dumps(again.to_json())) == json.loads(json.dumps(trace.to_json()))
    assert again.agents[0].steps[2].norm == trace.agents[0].steps[2].norm
    vectors = np.load(tmp_path / "t.npz")
    np.testing.assert_array_equal(vectors["agent1_hidden"], trace.vectors["agent1_hidden"])


def test_reading_a_file_that_is_not_a_trace_is_a_user_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    with pytest.raises(LatentMASError, match="not a latentmas trace"):
        read_traces(bad)
    bad.write_text("{broken")
    with pytest.raises(LatentMASError, match="not valid JSON"):
        read_traces(bad)


def test_html_page_is_self_contained(traced):
    page = trace_html(traced[0].trace)
    assert page.count("data:image/png;base64,") == 2
    assert "http://" not in page and "https://" not in page
    assert "planner" in page and "logit lens" in page


def test_auto_latent_steps_stop_early_and_stay_batch_invariant(tiny):
    method = LatentMAS(tiny, SAMPLING, latent_steps=LatentSteps(30, auto=True))
    batched = method.solve(QUESTIONS)
    alone = [method.solve([q])[0] for q in QUESTIONS]
    assert [a.final_text for a in batched] == [a.final_text for a in alone]
    assert [a.latent_steps for a in batched] == [a.latent_steps for a in alone]
    per_agent = [s.latent_steps for a in alone for s in a.agents[:-1]]
    assert all(0 < n <= 30 for n in per_agent)
    assert min(per_agent) < 30  # the guard really stopped something


def test_eval_trace_is_one_line_per_question(tiny, tmp_path):
    from latentmas import evaluate, get_task

    task = get_task("gsm8k")
    method = LatentMAS(tiny, SAMPLING, latent_steps=2).watch(Tracing(tiny))
    trace_path = tmp_path / "t.jsonl"
    evaluate(
        method,
        task,
        task.load()[:3],
        tmp_path / "run",
        batch_size=2,
        trace=TraceFile(trace_path, vectors=True),
    )
    traces = read_traces(trace_path)
    assert sorted(t.question for t in traces) == sorted(e.question for e in task.load()[:3])
    saved = sorted(p.name for p in vectors_dir(trace_path).iterdir())
    assert saved == ["gsm8k-0.npz", "gsm8k-1.npz", "gsm8k-2.npz"]
    assert np.load(vectors_dir(trace_path) / "gsm8k-0.npz")["agent0_embedding"].shape == (2, 64)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium package")
def test_inspect_html_renders_in_headless_chromium(traced, tmp_path):
    trace = traced[0].trace
    trace.save(tmp_path / "t.json")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "latentmas",
            "inspect",
            str(tmp_path / "t.json"),
            "--html",
            str(tmp_path / "t.html"),
        ],
        check=True,
        capture_output=True,
    )
    shot = tmp_path / "t.png"
    subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1200,1600",
            f"--screenshot={shot}",
            f"file://{tmp_path / 't.html'}",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    from PIL import Image

    image = np.asarray(Image.open(shot).convert("L"))
    assert image.shape[0] >= 1000
    # A blank or broken page is almost all white; the plots and tables are not.
    assert (image < 200).mean() > 0.02
