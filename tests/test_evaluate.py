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


def test_torn_last_line_is_redone_and_the_file_reads_back_whole(tiny, tmp_path):
    task = get_task("gsm8k")
    examples = task.load()[:3]
    method = LatentMAS(tiny, Sampling(max_new_tokens=3), latent_steps=1)
    evaluate(method, task, examples[:2], tmp_path)
    path = tmp_path / "results.jsonl"
    path.write_bytes(path.read_bytes()[:-40])  # a crash mid-write of the second row
    summary = evaluate(method, task, examples, tmp_path)
    assert summary.n == 3
    # Read the file itself back: every line parses, and each id is there once.
    ids = [json.loads(line)["id"] for line in path.read_text().splitlines()]
    assert sorted(ids) == ["gsm8k-0", "gsm8k-1", "gsm8k-2"]
    assert path.read_bytes().endswith(b"\n")


def test_drop_torn_tail_keeps_whole_lines(tmp_path):
    from latentmas.evaluate import drop_torn_tail

    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c"')
    drop_torn_tail(path)
    assert path.read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    path.write_bytes(b'{"c"')  # nothing whole at all
    drop_torn_tail(path)
    assert path.read_bytes() == b""
    path.write_bytes(b'{"a": 1}\n')  # already whole: untouched
    drop_torn_tail(path)
    assert path.read_bytes() == b'{"a": 1}\n'


def test_sampled_answers_survive_resume_at_another_batch_size(tiny, tmp_path):
    task = get_task("gsm8k")
    examples = task.load()[:5]
    sampling = Sampling(max_new_tokens=8, temperature=1.0, top_p=0.95, seed=3)
    method = LatentMAS(tiny, sampling, latent_steps=2)
    evaluate(method, task, examples, tmp_path / "whole", batch_size=1)
    evaluate(method, task, examples[:2], tmp_path / "resumed", batch_size=2)
    evaluate(method, task, examples, tmp_path / "resumed", batch_size=4)  # resumes the other three

    def texts(folder):
        rows = [json.loads(x) for x in (folder / "results.jsonl").read_text().splitlines()]
        return {r["id"]: r["final_text"] for r in rows}

    assert texts(tmp_path / "whole") == texts(tmp_path / "resumed")


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
