"""Evaluation: an interrupted run keeps its finished batches and a rerun does only the rest."""

from __future__ import annotations

import json

import pytest

from latentmas import LatentMAS, Sampling, evaluate, get_task


class Interrupt(Exception):
    pass


def test_resume_after_interruption_skips_finished_ids(tiny, tmp_path):
    task = get_task("gsm8k")
    examples = task.load()[:5]
    method = LatentMAS(tiny, Sampling(max_new_tokens=3), latent_steps=2)
    solve, calls = method.solve, []

    def failing_solve(questions, answer_format=""):
        calls.append(len(questions))
        if len(calls) == 2:
            raise Interrupt  # e.g. Ctrl-C or a crash during the second batch
        return solve(questions, answer_format)

    method.solve = failing_solve
    with pytest.raises(Interrupt):
        evaluate(method, task, examples, tmp_path, batch_size=2)
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    first_batch = [json.loads(x)["id"] for x in lines]
    assert len(first_batch) == 2  # the finished batch was kept

    calls.clear()
    method.solve = lambda qs, fmt="": (calls.append(len(qs)), solve(qs, fmt))[1]
    summary = evaluate(method, task, examples, tmp_path, batch_size=2)
    assert calls == [2, 1]  # only the three unfinished questions
    assert summary.n == 5
    ids = [json.loads(x)["id"] for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert ids[:2] == first_batch and sorted(ids) == [f"gsm8k-{i}" for i in range(5)]


def test_torn_last_line_is_redone(tiny, tmp_path):
    task = get_task("gsm8k")
    examples = task.load()[:2]
    method = LatentMAS(tiny, Sampling(max_new_tokens=3), latent_steps=1)
    evaluate(method, task, examples[:1], tmp_path)
    with (tmp_path / "results.jsonl").open("a") as f:
        f.write('{"id": "gsm8k-1", "quest')  # a crash mid-write
    summary = evaluate(method, task, examples, tmp_path)
    assert summary.n == 2


def test_results_do_not_depend_on_batch_size(tiny, tmp_path):
    task = get_task("gsm8k")
    examples = task.load()[:6]
    method = LatentMAS(tiny, Sampling(max_new_tokens=6), latent_steps=3)
    evaluate(method, task, examples, tmp_path / "b1", batch_size=1)
    evaluate(method, task, examples, tmp_path / "b4", batch_size=4)

    def texts(folder):
        rows = [json.loads(x) for x in (folder / "results.jsonl").read_text().splitlines()]
        return {r["id"]: r["final_text"] for r in rows}

    assert texts(tmp_path / "b1") == texts(tmp_path / "b4")
