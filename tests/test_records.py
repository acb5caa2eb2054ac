"""Run records: every results folder stored under benchmarks/results, written before records
were specs (run.json's schema 1), reads as the record its configuration writes today, so
each still resumes; and a folder of the old shape really resumes and is rewritten."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latentmas import LatentMAS, Sampling, evaluate, get_task
from latentmas.engines import Sampling as EngineSampling
from latentmas.evaluation.records import RECORD_SCHEMA, migrate, run_record
from latentmas.evaluation.tasks import all_tasks
from latentmas.tiny import tiny_loaded

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
STORED = sorted(RESULTS.rglob("run.json"))


@pytest.fixture(scope="module")
def quality():
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("quality", RESULTS.parent / "quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["quality"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_there_are_stored_runs_of_the_old_shape():
    assert sum("schema" not in json.loads(p.read_text()) for p in STORED) >= 100


@pytest.mark.parametrize("path", STORED, ids=[str(p.relative_to(RESULTS).parent) for p in STORED])
def test_a_stored_run_reads_as_the_record_its_config_writes_now(quality, path):
    """What `evaluate` compares before resuming: the stored run.json, migrated, against the
    record the same configuration on the same model, data and sampling makes today."""
    old = json.loads(path.read_text())
    config, _ = quality.config_from_folder(path.parent.name)
    sampling = EngineSampling(old["max_new_tokens"], old["temperature"], old["top_p"], old["seed"])
    spec = quality.config_spec(
        quality.parse_config(config), old["model"], old.get("dtype", "float32"), sampling
    )
    folder = path.parent.parent.name
    task = folder if folder in all_tasks() else old["task"]
    now = spec.replace(device="cpu").record() | {
        "task": task,  # the task as quality.py runs it now (humaneval_plus became humaneval)
        "data": old.get("data", "default"),
        "model_digest": old.get("model_digest", "digest of the model at hand"),
    }
    assert migrate(old, now) == now


def test_a_folder_of_the_old_shape_resumes_and_is_rewritten(tmp_path):
    lm = tiny_loaded("llama")
    task = get_task("gsm8k")
    examples = task.load()[:3]
    method = LatentMAS(lm, Sampling(max_new_tokens=3), latent_steps=2, handoff="view:thought_weight=0.5")
    evaluate(method, task, examples[:2], tmp_path)
    record = json.loads((tmp_path / "run.json").read_text())
    # As the code before records were specs wrote it: the method's description of itself.
    old = {k: v for k, v in record.items() if k not in ("schema", "handoff", "chat_template", "agent_models")}
    old |= {"realign": "ridge", "thought_weight": 0.5}
    del old["question_once"]  # written only when set
    (tmp_path / "run.json").write_text(json.dumps(old))
    summary = evaluate(method, task, examples, tmp_path)  # resumes: two answered, one to go
    assert summary.n == 3
    assert json.loads((tmp_path / "run.json").read_text()) == run_record(method, task, None)
    assert json.loads((tmp_path / "run.json").read_text())["schema"] == RECORD_SCHEMA


def test_a_record_of_another_run_is_still_refused(tmp_path):
    lm = tiny_loaded("llama")
    task = get_task("gsm8k")
    examples = task.load()[:1]
    evaluate(LatentMAS(lm, Sampling(max_new_tokens=2), latent_steps=2), task, examples, tmp_path)
    record = json.loads((tmp_path / "run.json").read_text())
    old = {k: v for k, v in record.items() if k not in ("schema", "handoff", "chat_template", "agent_models")}
    (tmp_path / "run.json").write_text(json.dumps(old | {"realign": "norm", "question_once": True}))
    with pytest.raises(Exception, match="other settings"):
        evaluate(LatentMAS(lm, Sampling(max_new_tokens=2), latent_steps=2), task, examples, tmp_path)
