"""Evaluation: an interrupted run keeps its finished batches and a rerun does only the rest."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from latentmas import LatentMAS, Sampling, evaluate, get_task
from latentmas.errors import LatentMASError
from latentmas.evaluation.evaluate import read_results


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


def test_a_results_file_replaced_during_the_run_loses_no_answer(tiny, tmp_path):
    # As `git stash` while a run writes a tracked results.jsonl: the path gets an older copy
    # (a new file), and the answers appended since went to the file that lost its name.
    task = get_task("gsm8k")
    examples = task.load()[:6]
    method = LatentMAS(tiny, Sampling(max_new_tokens=2), latent_steps=0)
    path, solve, batches = tmp_path / "results.jsonl", method.solve, []

    def solve_and_replace(questions, answer_format=""):
        batches.append(len(questions))
        if len(batches) == 3:
            older = path.read_text().splitlines(keepends=True)[:1]
            (tmp_path / "older").write_text("".join(older))
            os.replace(tmp_path / "older", path)
        return solve(questions, answer_format)

    method.solve = solve_and_replace
    assert evaluate(method, task, examples, tmp_path, batch_size=2).n == 6
    ids = [json.loads(line)["id"] for line in path.read_text().splitlines()]
    assert sorted(ids) == [f"gsm8k-{i}" for i in range(6)]


def test_drop_torn_tail_keeps_whole_lines(tmp_path):
    from latentmas.evaluation.evaluate import drop_torn_tail

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


# --- A folder resumes only the same run: engine, device, dtype, data, model -----------------


def _one_run(tiny, tmp_path, data=None):
    task = get_task("gsm8k")
    method = LatentMAS(tiny, Sampling(max_new_tokens=2), latent_steps=1)
    examples = task.load(data)[:2]
    return method, task, examples, evaluate(method, task, examples, tmp_path, data=data)


def test_run_json_records_what_decides_the_answers(tiny, tmp_path):
    _one_run(tiny, tmp_path)
    record = json.loads((tmp_path / "run.json").read_text())
    assert {k: record[k] for k in ("engine", "device", "dtype", "data")} == {
        "engine": "transformers",
        "device": "cpu",
        "dtype": "float32",
        "data": "default",
    }
    assert "model_digest" in record


def test_another_engine_is_refused_and_the_field_named(tiny, tmp_path, monkeypatch):
    method, task, examples, _ = _one_run(tiny, tmp_path)
    monkeypatch.setattr(type(method.engine), "name", "llamacpp")
    with pytest.raises(LatentMASError, match=r"\(engine: 'transformers' then, 'llamacpp' now\)"):
        evaluate(method, task, examples, tmp_path)


def test_another_data_file_that_reuses_ids_is_refused(tiny, tmp_path):
    rows = [{"question": f"What is {i} + 1?", "answer": f"#### {i + 1}"} for i in range(2)]
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text("".join(json.dumps(r) + "\n" for r in rows))
    second.write_text("".join(json.dumps({**r, "question": r["question"] + "?"}) + "\n" for r in rows))
    method, task, _, _ = _one_run(tiny, tmp_path / "out", data=str(first))
    with pytest.raises(LatentMASError, match=r"\(data: 'a.jsonl sha256:"):
        evaluate(method, task, task.load(str(second)), tmp_path / "out", data=str(second))


def test_results_of_other_questions_under_the_same_ids_are_refused(tiny, tmp_path):
    method, task, examples, _ = _one_run(tiny, tmp_path)
    changed = [dataclasses.replace(examples[0], question="another question"), examples[1]]
    with pytest.raises(LatentMASError, match="answered id 'gsm8k-0' for another question"):
        evaluate(method, task, changed, tmp_path)


def test_a_corrupt_run_json_is_an_error_not_overwritten(tiny, tmp_path):
    method, task, examples, _ = _one_run(tiny, tmp_path)
    (tmp_path / "run.json").write_text('{"model": ')
    with pytest.raises(LatentMASError, match="run.json is corrupt"):
        evaluate(method, task, examples, tmp_path)
    assert (tmp_path / "run.json").read_text() == '{"model": '


def test_a_results_line_that_is_json_but_not_an_object_is_skipped_with_a_warning(tiny, tmp_path, caplog):
    method, task, examples, _ = _one_run(tiny, tmp_path)
    path = tmp_path / "results.jsonl"
    path.write_text(path.read_text() + "[1, 2]\n" + '"text"\n')
    with caplog.at_level("WARNING"):
        assert len(read_results(path)) == 2
    assert "line 3 is not a result" in caplog.text and "line 4" in caplog.text


def test_a_data_folder_is_recorded_by_the_digest_of_its_files(tmp_path):
    from latentmas.evaluation.records import data_source

    folder = tmp_path / "benchmark_tasks"
    (folder / "navigate").mkdir(parents=True)
    (folder / "navigate" / "task.json").write_text('{"examples": []}')
    first = data_source(str(folder))
    assert first.startswith("benchmark_tasks sha256:")
    (folder / "navigate" / "task.json").write_text('{"examples": [1]}')
    assert data_source(str(folder)) != first


def test_the_model_digest_ignores_the_transformers_version_that_wrote_the_config(tmp_path):
    from types import SimpleNamespace

    from latentmas.models import model_digest

    def digest(**config):
        (tmp_path / "config.json").write_text(json.dumps(config))
        return model_digest(SimpleNamespace(source=str(tmp_path)))

    (tmp_path / "model.safetensors").write_bytes(b"weights")
    one = digest(hidden_size=8, transformers_version="5.24.0")
    assert digest(hidden_size=8, transformers_version="5.25.0") == one
    assert digest(hidden_size=16, transformers_version="5.24.0") != one
    (tmp_path / "model.safetensors").write_bytes(b"other weights")
    assert digest(hidden_size=8, transformers_version="5.24.0") != one


def test_each_machine_a_run_meets_is_logged_once(tiny, tmp_path, monkeypatch):
    from latentmas.evaluation import records as ev

    method, task, examples, _ = _one_run(tiny, tmp_path)
    evaluate(method, task, examples, tmp_path)  # resumed where it ran: nothing new
    assert [r["answered_before"] for r in ev.read_environments(tmp_path)] == [0]
    monkeypatch.setattr(ev, "cpu_name", lambda: "another CPU")
    evaluate(method, task, examples + task.load(None)[2:3], tmp_path)
    rows = ev.read_environments(tmp_path)
    assert [(r["cpu"] == "another CPU", r["answered_before"]) for r in rows] == [(False, 0), (True, 2)]
    assert set(rows[0]) >= {"cpu", "torch", "transformers", "latentmas"}


def _code_row(**fields) -> str:
    row = dict(
        id="t",
        question="",
        gold="",
        prediction=None,
        correct=False,
        final_text="```python\ndef add(a, b):\n    return a + b\n\nprint(add(1,",  # cut off after the function
        input_tokens=1,
        output_tokens=384,
        latent_steps=0,
        seconds=1.0,
    )
    return json.dumps({**row, **fields}) + "\n"


def test_answers_scored_by_an_earlier_grading_rule_are_graded_again_once(tmp_path):
    from latentmas.evaluation.evaluate import regrade
    from latentmas.evaluation.tasks import Example

    task = get_task("humaneval")
    tests = "def check(f):\n    assert f(2, 3) == 5\n"
    examples = [Example(id="t", question="", gold="", tests=tests, entry_point="add")]
    path = tmp_path / "results.jsonl"
    path.write_text(_code_row())  # a row from before rows named their grading rule
    assert regrade(tmp_path, task, examples) == 1
    [row] = read_results(path)
    assert row.correct and row.grading == task.grading
    before = path.stat().st_mtime_ns
    assert regrade(tmp_path, task, examples) == 0
    assert path.stat().st_mtime_ns == before  # nothing stale: the file is not rewritten


def test_a_resumed_run_summarizes_its_answers_as_graded_again(tiny, tmp_path):
    from latentmas.evaluation.tasks import Example

    task = get_task("humaneval")
    tests = "def check(f):\n    assert f(2, 3) == 5\n"
    examples = [Example(id="t", question="", gold="", tests=tests, entry_point="add")]
    (tmp_path / "results.jsonl").write_text(_code_row())  # wrong under the first rule
    method = LatentMAS(tiny, Sampling(max_new_tokens=2), latent_steps=0)
    method.solve = lambda *_: pytest.fail("the answer was already there")
    assert evaluate(method, task, examples, tmp_path).accuracy == 1.0


def test_a_results_file_has_one_writer(tiny, tmp_path):
    import fcntl

    from latentmas.evaluation.evaluate import regrade
    from latentmas.evaluation.tasks import Example

    task = get_task("humaneval")
    examples = [Example(id="t", question="", gold="", tests="def check(f):\n    pass\n", entry_point="add")]
    path = tmp_path / "results.jsonl"
    path.write_text(_code_row())
    with path.open("a") as other_run:
        fcntl.flock(other_run.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(LatentMASError, match="being written by another run"):
            regrade(tmp_path, task, examples)
        gsm8k = get_task("gsm8k")
        with pytest.raises(LatentMASError, match="being written by another run"):
            evaluate(
                LatentMAS(tiny, Sampling(max_new_tokens=2), latent_steps=0), gsm8k, gsm8k.load()[:1], tmp_path
            )
    assert read_results(path)[0].grading == "1"  # untouched while the other run held it
