"""The quality benchmark's statistics against known values, and a quality run that resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latentmas import Sampling
from latentmas.evaluation.stats import compare_over_seeds, compare_paired, mcnemar_exact, wilson_interval
from latentmas.tiny import tiny_loaded

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "correct, n, low, high",
    [(5, 20, 0.1119, 0.4687), (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (50, 100, 0.4038, 0.5962)],
)
def test_wilson_interval_matches_published_values(correct, n, low, high):
    got = wilson_interval(correct, n)
    assert got == pytest.approx((low, high), abs=1e-4)


@pytest.mark.parametrize(
    "only_a, only_b, p",
    [(1, 9, 22 / 1024), (0, 5, 2 / 32), (3, 3, 1.0), (0, 0, 1.0), (2, 10, 2 * (1 + 12 + 66) / 4096)],
)
def test_exact_mcnemar_matches_the_binomial_tail(only_a, only_b, p):
    assert mcnemar_exact(only_a, only_b) == pytest.approx(p)
    assert mcnemar_exact(only_b, only_a) == pytest.approx(p)  # two-sided


def test_paired_comparison_uses_only_shared_questions():
    a = {"q1": True, "q2": True, "q3": False, "q4": True}
    b = {"q1": False, "q2": True, "q3": True, "q5": True}
    cmp = compare_paired(a, b)
    assert (cmp.n, cmp.only_a, cmp.only_b) == (3, 1, 1)
    assert cmp.difference == pytest.approx(0.0) and cmp.p_value == 1.0


def test_one_seed_per_method_pooled_is_mcnemar():
    a = {"q1": True, "q2": True, "q3": False, "q4": True}
    b = {"q1": False, "q2": True, "q3": True, "q4": False}
    pooled, plain = compare_over_seeds([a], [b]), compare_paired(a, b)
    assert (pooled.only_a, pooled.only_b, pooled.p_value) == (plain.only_a, plain.only_b, plain.p_value)
    assert pooled.difference == pytest.approx(plain.difference)


def test_seeds_pool_per_question_and_keep_only_questions_every_run_answered():
    a = [{"q1": True, "q2": True, "q3": False, "q9": True}, {"q1": True, "q2": False, "q3": False}]
    b = [{"q1": False, "q2": True, "q3": False}, {"q1": True, "q2": False, "q3": True}]
    cmp = compare_over_seeds(a, b)  # shares a: 1, .5, 0; b: .5, .5, .5 (q9 is not in every run)
    assert cmp.n == 3
    assert (cmp.only_a, cmp.only_b) == (1, 1)  # q1 better in a, q3 better in b, q2 a tie
    assert cmp.accuracy_a == pytest.approx(0.5) and cmp.accuracy_b == pytest.approx(0.5)
    assert cmp.p_value == 1.0
    nine = [{f"q{i}": True for i in range(9)}]
    none = [{f"q{i}": False for i in range(9)}]
    assert compare_over_seeds(nine * 3, none * 3).p_value == pytest.approx(2 / 2**9)


def test_config_names_parse_into_one_change_each(benchmark_script):
    quality = benchmark_script("quality")
    assert quality.parse_config("latent_mas[m=0]")["options"]["latent_steps"] == "0"
    both = quality.parse_config("latent_mas[realign=soft,m=3]")["options"]
    assert both == {"realign": "soft", "latent_steps": "3"}
    spec = quality.config_spec(
        quality.parse_config("latent_mas[realign=soft,m=3]"), "m", "float32", Sampling()
    )
    assert spec.handoff.realign == "soft" and spec.latent_steps.count == 3 and spec.memory == "full"
    assert quality.split_configs("single,latent_mas[realign=soft,m=3]") == [
        "single",
        "latent_mas[realign=soft,m=3]",
    ]
    assert len(quality.all_configs()) == len(set(quality.all_configs()))
    with pytest.raises(Exception, match="cannot set"):
        quality.parse_config("latent_mas[bogus=1]")


def _tiny_model_and_gsm8k(tmp_path: Path, rows: list[dict]) -> tuple[Path, Path]:
    """A saved random-weight model and a GSM8K-style JSONL file of `rows`, for quality.main."""
    model_dir = tmp_path / "model"
    lm = tiny_loaded("llama")
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return model_dir, data


def test_quality_run_writes_tables_and_resumes(tmp_path, capsys, benchmark_script):
    rows = [{"question": f"What is {i} + {i}?", "answer": f"#### {2 * i}"} for i in range(4)]
    model_dir, data = _tiny_model_and_gsm8k(tmp_path, rows)
    quality = benchmark_script("quality")
    args = [
        "--model",
        str(model_dir),
        "--gsm8k-file",
        str(data),
        "--limit",
        "3",
        "--max-new-tokens",
        "3",
        "--batch-size",
        "2",
        "--configs",
        "single,latent_mas[m=2]",
        "--out",
        str(tmp_path / "out"),
    ]
    assert quality.main(args) == 0
    first = capsys.readouterr().out
    assert "3 to run" in first and "| latent_mas[m=2] | 3 |" in first
    report = json.loads((tmp_path / "out" / "gsm8k" / "quality.json").read_text())
    assert {r["config"] for r in report["rows"]} == {"single", "latent_mas[m=2]"}
    assert report["split"] == "questions 1–3"
    assert (tmp_path / "out" / "gsm8k" / "quality.png").stat().st_size > 0
    machines = (tmp_path / "out" / "gsm8k" / "quality.md").read_text().split("Computed on")[1]
    assert "- single: " in machines and "- latent_mas[m=2]: " in machines and "transformers" in machines
    # Rerun: nothing is recomputed, and one more question extends the run.
    assert quality.main(args) == 0
    assert "3 done, 0 to run" in capsys.readouterr().out
    assert quality.main([*args[:5], "4", *args[6:]]) == 0  # --limit 4
    assert "3 done, 1 to run" in capsys.readouterr().out
    results = (tmp_path / "out" / "gsm8k" / "single" / "results.jsonl").read_text().splitlines()
    assert len(results) == 4


def test_sampled_pass_reports_each_seed_and_pools_them_against_single(tmp_path, capsys, benchmark_script):
    rows = [{"question": f"{i} + 1?", "answer": f"#### {i + 1}"} for i in range(2)]
    model_dir, data = _tiny_model_and_gsm8k(tmp_path, rows)
    args = ["--model", str(model_dir), "--gsm8k-file", str(data), "--limit", "2", "--max-new-tokens", "2"]
    args += ["--configs", "single,latent_mas[m=1]", "--temperature", "0.6", "--top-p", "0.95"]
    args += ["--seeds", "0,1", "--out", str(tmp_path / "out")]
    assert benchmark_script("quality").main(args) == 0
    out = capsys.readouterr().out
    assert "gsm8k, seed 0:" in out and "gsm8k, seed 1:" in out
    pooled = [line for line in out.splitlines() if line.startswith("| gsm8k | latent_mas[m=1] | 2 |")]
    assert len(pooled) == 1 and pooled[0].rstrip(" |").split("; ")[-1].replace(".", "").isdigit(), pooled
    assert (tmp_path / "out" / "gsm8k" / "latent_mas-m1-seed1" / "results.jsonl").exists()


def test_folder_names_give_back_their_configs(benchmark_script):
    quality = benchmark_script("quality")
    names = quality.all_configs() + [
        "latent_mas[from=0.5,enter=true,realign=none]",
        "latent_mas[H=3.51,dH=1.6]",
        "latent_mas[handoff=states,msg=64]",
        "text_mas[msg=64]",
        "latent_mas[m=0,memory=latent_only]",
    ]
    for name in names:
        assert quality.config_from_folder(quality.folder_name(name, 0, False)) == (name, None)
        assert quality.config_from_folder(quality.folder_name(name, 3, True)) == (name, 3)


def test_a_run_of_some_configs_keeps_the_others_in_the_report(tmp_path, capsys, benchmark_script):
    rows = [{"question": f"What is {i} + 1?", "answer": f"#### {i + 1}"} for i in range(2)]
    model_dir, data = _tiny_model_and_gsm8k(tmp_path, rows)
    quality = benchmark_script("quality")
    args = ["--model", str(model_dir), "--gsm8k-file", str(data), "--limit", "2", "--max-new-tokens", "2"]
    args += ["--out", str(tmp_path / "out"), "--configs"]
    assert quality.main([*args, "single"]) == 0
    assert quality.main([*args, "latent_mas[m=1,realign=none]"]) == 0
    stray = tmp_path / "out" / "gsm8k" / "notes"  # a folder the script did not write is left out
    stray.mkdir()
    (stray / "results.jsonl").write_text("")
    assert quality.main([*args, "single", "--report-only", "--dtype", "float16"]) == 0
    report = json.loads((tmp_path / "out" / "gsm8k" / "quality.json").read_text())
    assert [r["config"] for r in report["rows"]] == ["single", "latent_mas[m=1,realign=none]"]
    assert report["dtype"] == "float32"  # what ran, not the report command's flag
    assert "| latent_mas[m=1,realign=none] | 2 |" in capsys.readouterr().out


def test_unknown_config_is_a_clear_error(capsys, benchmark_script):
    assert benchmark_script("quality").main(["--configs", "double_mas", "--report-only"]) == 2
    assert "error:" in capsys.readouterr().err


def test_endings_tell_format_failures_from_wrong_maths(benchmark_script):
    quality = benchmark_script("quality")
    from latentmas.evaluation.evaluate import QuestionResult

    def result(i: int, text: str, tokens: int, correct: bool) -> QuestionResult:
        return QuestionResult(f"q{i}", "?", "3", None, correct, text, 10, tokens, 0, 1.0)

    loop = "\n".join(["Step: add the bolts together."] * 4)
    results = [
        result(0, "so \\boxed{3}", 50, True),  # right, boxed
        result(1, "so \\boxed{4}", 50, False),  # wrong maths, right format
        result(2, "The plan is", 20, False),  # ended its turn unanswered
        result(3, loop, 64, False),  # a loop cut off at the limit
        result(4, "so the answer is \\boxed{1", 30, False),  # an unclosed box is no answer
    ]
    e = quality.endings(results, max_new_tokens=64)
    assert (e.answered, e.correct_when_answered) == (2, 1)
    assert (e.hit_limit, e.stopped_unanswered, e.repetitive) == (1, 2, 1)

    code = [
        result(0, "```python\ndef f(x):\n    return x\n```", 40, True),
        result(1, "```python\nimport math\n\ndef g(x):\n    return 2\n```", 40, False),
        result(2, "```\n```\n``` doing. doing", 30, False),  # fences without a function
        result(3, "```python\ndef f(x):\n    return", 64, False),  # cut off before the fence closes
        result(4, "def f(x): return x", 20, False),  # no code block
    ]
    e = quality.endings(code, max_new_tokens=64, kind="code")
    assert (e.answered, e.correct_when_answered, e.hit_limit, e.stopped_unanswered) == (2, 1, 1, 2)


def test_endings_count_final_answers_that_write_the_refiners_plan(benchmark_script):
    quality = benchmark_script("quality")
    from latentmas.evaluation.evaluate import QuestionResult

    texts = [
        "Here's the improved plan and the final function:",  # the Refiner's task
        "Here is the revised plan:\n1. Sort the list",
        "Let's follow the refined plan step by step: \\boxed{3}",  # the Solver's own task
        "The critical step is the sum. \\boxed{3}",
    ]
    results = [QuestionResult(f"q{i}", "?", "3", None, False, t, 10, 20, 0, 1.0) for i, t in enumerate(texts)]
    assert quality.endings(results, max_new_tokens=64).wrote_refiners_plan == 2


def test_holm_adjustment_matches_the_step_down_definition():
    from latentmas.evaluation.stats import holm_adjust

    # sorted 0.01, 0.02, 0.04 -> 3 x 0.01, 2 x 0.02, max(0.04, previous); order kept
    assert holm_adjust([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm_adjust([0.5, 0.6]) == [1.0, 1.0]
    assert holm_adjust([]) == []


def _write_results(folder: Path, config: str, right: list[bool], tokens: int = 10) -> None:
    """A quality run's results.jsonl for one configuration, as benchmarks/quality.py lays it out."""
    from dataclasses import asdict

    from latentmas.evaluation.evaluate import QuestionResult

    path = folder / "gsm8k" / config.replace("[", "-").replace("]", "").replace("=", "") / "results.jsonl"
    path.parent.mkdir(parents=True)
    rows = [
        QuestionResult(f"gsm8k-{i}", "q", "1", "1", ok, "", 1, tokens, 0, 1.0) for i, ok in enumerate(right)
    ]
    path.write_text("".join(json.dumps(asdict(r)) + "\n" for r in rows))


def test_scale_table_pairs_each_model_against_its_own_baselines(tmp_path, capsys, benchmark_script):
    """Two fake 'models' whose latent_mas differs from single on different questions; the
    table pairs within a model, never across; comparisons no family declares are exploratory
    (raw p, an interval, no Holm and no verdict)."""
    small, large = tmp_path / "small", tmp_path / "large"
    _write_results(small, "single", [True] * 10 + [False] * 10)
    _write_results(small, "latent_mas", [False] * 10 + [False] * 10)
    _write_results(small, "latent_mas[m=0]", [True] * 10 + [False] * 10)
    _write_results(large, "single", [True] * 20)
    _write_results(large, "latent_mas", [True] * 20)
    _write_results(large, "latent_mas[m=0]", [True] * 20)
    scale = benchmark_script("scale")
    out = tmp_path / "out"
    models = f"small={small},large={large}"
    assert (
        scale.main(["--models", models, "--configs", "single,latent_mas,latent_mas[m=0]", "--out", str(out)])
        == 0
    )
    rows = json.loads((out / "scale.json").read_text())["gsm8k"]
    small_latent = next(r for r in rows if r["model"] == "small" and r["config"] == "latent_mas")
    assert small_latent["vs single"]["only_baseline"] == 10 and small_latent["vs single"]["p"] < 0.01
    assert (
        small_latent["vs single"]["p_holm"] is None and small_latent["vs single"]["verdict"] == "exploratory"
    )
    low, high = small_latent["vs single"]["interval"]
    assert low < -0.5 < high < 0
    large_latent = next(r for r in rows if r["model"] == "large" and r["config"] == "latent_mas")
    assert large_latent["vs single"]["p"] == 1.0 and large_latent["accuracy"] == 1.0
    assert (out / "scale-gsm8k.png").is_file()


def test_scale_table_checks_the_users_target_against_text_mas(tmp_path, benchmark_script):
    """Each latent row is paired with TextMAS and meets the target only with accuracy at least
    single's, at most 2 points under TextMAS's, and at most half TextMAS's decoded tokens."""
    folder = tmp_path / "m"
    right = lambda k: [True] * k + [False] * (100 - k)  # noqa: E731
    _write_results(folder, "single", right(50), tokens=300)
    _write_results(folder, "text_mas", right(60), tokens=600)
    _write_results(folder, "latent_mas", right(58), tokens=300)  # exactly at both limits
    _write_results(folder, "latent_mas[m=0]", right(57), tokens=250)  # 3 points under TextMAS
    _write_results(folder, "latent_mas[m=1]", right(60), tokens=301)  # over half the tokens
    _write_results(folder, "latent_mas[m=2]", right(60)[:40], tokens=100)  # its run still going
    scale = benchmark_script("scale")
    configs = "single,text_mas,latent_mas,latent_mas[m=0],latent_mas[m=1],latent_mas[m=2]"
    assert (
        scale.main(
            ["--models", f"m={folder}", "--configs", configs, "--limit", "100", "--out", str(tmp_path / "o")]
        )
        == 0
    )
    rows = {r["config"]: r for r in json.loads((tmp_path / "o" / "scale.json").read_text())["gsm8k"]}
    assert [rows[c]["user target"] for c in scale.split_configs(configs)] == [
        None,
        None,
        True,
        False,
        False,
        None,
    ]
    assert rows["latent_mas"]["tokens vs text_mas"] == pytest.approx(-0.5)
    versus = rows["latent_mas"]["vs text_mas"]
    assert (versus["difference"], versus["only_config"], versus["only_baseline"]) == (
        pytest.approx(-0.02),
        0,
        2,
    )
    assert rows["text_mas"]["vs text_mas"] is None and rows["single"]["vs text_mas"]["only_baseline"] == 10
    summary = (tmp_path / "o" / "scale.md").read_text().split("### The user's target")[1]
    assert "| latent_mas | yes | yes |" in summary and "| latent_mas[m=1] | no | no |" in summary
    assert "| single |" not in summary
    assert "| latent_mas[m=2] | 40 (running) |" in (tmp_path / "o" / "scale.md").read_text()


def test_scale_pairs_the_states_handoff_with_its_text_twin(tmp_path, benchmark_script):
    """The states handoff is compared with the same short messages passed as text, on the
    questions both answered, and a text baseline is never judged against the user's target."""
    folder = tmp_path / "m"
    _write_results(folder, "single", [True] * 10 + [False] * 10)
    _write_results(folder, "text_mas", [True] * 12 + [False] * 8, tokens=600)
    _write_results(folder, "latent_mas[handoff=states]", [True] * 16 + [False] * 4, tokens=200)
    _write_results(folder, "text_mas[msg=64]", ([True] * 10 + [False] * 10)[:15], tokens=150)  # still going
    scale = benchmark_script("scale")
    configs = "single,text_mas,text_mas[msg=64],latent_mas[handoff=states]"
    out = tmp_path / "o"
    assert (
        scale.main(["--models", f"m={folder}", "--configs", configs, "--limit", "20", "--out", str(out)]) == 0
    )
    payload = json.loads((out / "scale.json").read_text())
    (twin,) = payload["text twins"]["gsm8k"]
    assert (twin["n"], twin["complete"], twin["only_config"], twin["only_twin"]) == (15, False, 5, 0)
    assert twin["difference"] == pytest.approx(5 / 15) and twin["twin_tokens"] == 150
    rows = {r["config"]: r for r in payload["gsm8k"]}
    assert (
        rows["text_mas[msg=64]"]["user target"] is None and rows["latent_mas[handoff=states]"]["user target"]
    )
    text = (out / "scale.md").read_text()
    assert "| m | latent_mas[handoff=states] | text_mas[msg=64] | 15 (running) |" in text
    assert "| text_mas[msg=64] |" not in text.split("### The user's target")[1]


def test_scale_quick_runs_both_embedded_models_then_tabulates_their_first_questions(
    tmp_path, monkeypatch, benchmark_script
):
    """--quick runs the quality benchmark's quick mode on each embedded model (in bfloat16
    where the CPU computes it) and tables what those runs wrote; a failing run stops it."""
    scale = benchmark_script("scale")
    calls = []

    def fake_quality(argv):
        calls.append(argv)
        out = Path(argv[argv.index("--out") + 1])
        for config in scale.split_configs(argv[argv.index("--configs") + 1]):
            _write_results(out, config, [True] * 4 + [False] * 6)
        return 0

    monkeypatch.setattr(scale.quality, "main", fake_quality)
    assert scale.main(["--quick", "--out", str(tmp_path / "quick")]) == 0
    assert [a[a.index("--model") + 1] for a in calls] == ["qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]
    assert all("--quick" in a and a[a.index("--dtype") + 1] == "auto" for a in calls)
    rows = json.loads((tmp_path / "quick" / "scale.json").read_text())["gsm8k"]
    configs = scale.split_configs(scale.QUICK_CONFIGS)
    assert [(r["model"], r["config"]) for r in rows] == [(m, c) for m in ("0.5B", "1.5B") for c in configs]
    assert all(r["n"] == 8 and r["accuracy"] == 0.5 for r in rows)  # the first 8 of the 10 written

    monkeypatch.setattr(scale.quality, "main", lambda argv: 2)
    assert scale.main(["--quick", "--out", str(tmp_path / "failed")]) == 2
    assert not (tmp_path / "failed" / "scale.json").exists()


def test_scale_refuses_answers_an_earlier_grading_rule_scored(tmp_path, benchmark_script):
    from latentmas.errors import LatentMASError

    _write_results(tmp_path / "m", "single", [True, False])
    path = tmp_path / "m" / "gsm8k" / "single" / "results.jsonl"
    path.write_text(path.read_text().replace('"grading": "1"', '"grading": "0"'))
    scale = benchmark_script("scale")
    with pytest.raises(LatentMASError, match="graded by an earlier rule.*--report-only"):
        scale.main(["--models", f"m={tmp_path / 'm'}", "--configs", "single", "--out", str(tmp_path / "out")])


def test_a_report_grades_again_what_an_earlier_rule_scored(tmp_path, benchmark_script):
    """A right HumanEval answer cut off in its own example call: wrong by the first rule,
    right by the current one, and the report must say the current one."""
    from latentmas.evaluation.tasks.code import _humaneval_rows_offline

    first = _humaneval_rows_offline()[0]
    text = (
        f"```python\n{first['prompt']}{first['canonical_solution']}\nprint({first['entry_point']}([1.0, 2.0"
    )
    row = dict(id=first["task_id"], question="", gold="", prediction=None, correct=False, final_text=text)
    row |= dict(
        input_tokens=1, output_tokens=384, latent_steps=0, seconds=1.0
    )  # no "grading": the first rule
    folder = tmp_path / "out" / "humaneval" / "single"
    folder.mkdir(parents=True)
    (folder / "results.jsonl").write_text(json.dumps(row) + "\n")
    quality = benchmark_script("quality")
    argv = ["--report-only", "--tasks", "humaneval", "--limit", "1", "--configs", "single"]
    assert quality.main([*argv, "--out", str(tmp_path / "out")]) == 0
    [single] = json.loads((tmp_path / "out" / "humaneval" / "quality.json").read_text())["rows"]
    assert single["accuracy"] == 1.0
