"""The report compares latent_mas with text_mas per question, on the questions both answered."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from latentmas.evaluation.evaluate import QuestionResult, Summary
from latentmas.evaluation.report import comparison, read_runs


def _write_run(folder: Path, method: str, seconds: dict[str, float], tokens: int, model: str = "m") -> None:
    folder.mkdir(parents=True)
    settings = {"method": method, "topology": "sequential", "max_new_tokens": 8, "temperature": 0.0}
    rows = [
        QuestionResult(i, "q", "1", "1", True, "", 5, tokens, 0, s, settings=settings)
        for i, s in seconds.items()
    ]
    (folder / "results.jsonl").write_text("".join(json.dumps(asdict(r)) + "\n" for r in rows))
    summary = Summary(
        method, model, "gsm8k", len(rows), 1.0, tokens, 5, 0, sum(seconds.values()), 1, settings
    )
    (folder / "summary.json").write_text(json.dumps(asdict(summary)))


def test_speedup_is_computed_on_the_questions_both_runs_answered(tmp_path):
    """text_mas answered 10 questions, latent_mas 2 of them: 4 s against 1 s each is 4x,
    not the 40 s / 2 s = 20x that dividing the totals gives."""
    _write_run(tmp_path / "gsm8k" / "text_mas", "text_mas", {f"q{i}": 4.0 for i in range(10)}, 100)
    _write_run(tmp_path / "gsm8k" / "latent_mas", "latent_mas", {"q0": 1.0, "q1": 1.0}, 25)
    row = next(r for r in comparison(read_runs(tmp_path)) if r["method"] == "latent_mas")
    assert row["paired_n"] == 2
    assert row["speedup_vs_text_mas"] == 4.0
    assert row["token_reduction_vs_text_mas"] == 0.75


def test_a_text_mas_run_of_another_model_is_no_baseline(tmp_path):
    _write_run(tmp_path / "a" / "text_mas", "text_mas", {"q0": 4.0}, 100, model="other")
    _write_run(tmp_path / "a" / "latent_mas", "latent_mas", {"q0": 1.0}, 25)
    row = next(r for r in comparison(read_runs(tmp_path)) if r["method"] == "latent_mas")
    assert row["speedup_vs_text_mas"] is None and row["paired_n"] is None
