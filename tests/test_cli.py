"""The command line: end to end on a tiny local model, and one clear line for every bad input."""

from __future__ import annotations

import json
import sys

import pytest

from latentmas.cli import main
from latentmas.tiny import tiny_loaded

from .test_tasks import PAPER_TASKS


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A tiny llama saved as a normal transformers folder, as a user's local model would be."""
    path = tmp_path_factory.mktemp("tiny-model")
    lm = tiny_loaded("llama")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def model_dir_without_template(tmp_path_factory):
    path = tmp_path_factory.mktemp("no-template")
    lm = tiny_loaded("llama")
    lm.tokenizer.chat_template = None
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path


def cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["latentmas", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
        raise SystemExit(0)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def test_run_prints_every_agent_and_the_answer(monkeypatch, capsys, model_dir):
    code, out, _ = cli(
        monkeypatch, capsys, "run", "What is 2+2?", "--model", model_dir, "--max-new-tokens", "4"
    )
    assert code == 0
    for role in ("planner", "critic", "refiner", "solver", "answer"):
        assert role in out


@pytest.mark.parametrize("method", ["single", "text_mas", "latent_mas"])
def test_eval_writes_results_and_summary(monkeypatch, capsys, model_dir, tmp_path, method):
    out_dir = tmp_path / method
    args = ["eval", "--model", model_dir, "--method", method, "--limit", "3", "--batch-size", "2"]
    code, out, _ = cli(monkeypatch, capsys, *args, "--max-new-tokens", "4", "--out", out_dir)
    assert code == 0, out
    rows = [json.loads(line) for line in (out_dir / "results.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == ["gsm8k-0", "gsm8k-1", "gsm8k-2"]
    fields = {
        "id",
        "question",
        "gold",
        "prediction",
        "correct",
        "final_text",
        "input_tokens",
        "output_tokens",
        "latent_steps",
        "seconds",
        "agents",
    }
    assert fields <= rows[0].keys()
    summary = json.loads((out_dir / "summary.json").read_text())
    assert {
        "method",
        "model",
        "task",
        "n",
        "accuracy",
        "output_tokens_mean",
        "seconds_total",
    } <= summary.keys()
    assert summary["method"] == method and summary["n"] == 3
    assert "accuracy" in out


def test_rerun_with_other_settings_into_the_same_folder_is_refused(monkeypatch, capsys, model_dir, tmp_path):
    base = ["eval", "--model", model_dir, "--limit", "1", "--max-new-tokens", "2", "--out", tmp_path]
    assert cli(monkeypatch, capsys, *base)[0] == 0
    code, _, err = cli(monkeypatch, capsys, *base, "--latent-steps", "3")
    assert code == 2 and "latent_steps" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "q", "--method", "telepathy"], "telepathy"),
        (["run", "q", "--latent-steps", "-1"], "latent-steps"),
        (["run", "q", "--latent-steps", "100000"], "latent-steps"),
        (["eval", "--batch-size", "0"], "batch-size"),
        (["eval", "--limit", "0"], "limit"),
        (["run", "q", "--top-p", "1.5"], "top-p"),
        (["run", "q", "--model", "./no/such/model"], "does not exist"),
        (["run", "q", "--model", "missing.gguf"], "GGUF file not found"),
        (["run", "q", "--model", "qwen-coder"], "did you mean 'qwen2.5-coder-"),
        (["run", "q", "--model", "qwen2.5-coder-1.5"], "did you mean 'qwen2.5-coder-1.5b'"),
        (["run", "q", "--model", "no such model!"], "unknown model"),
        (["eval", "--task", "chess"], "unknown task"),
        (["eval", "--data", "/no/such/file.jsonl"], "not found"),
        (["run", "   "], "empty"),
        (["frobnicate"], "frobnicate"),
    ],
)
def test_bad_input_exits_2_with_one_line(monkeypatch, capsys, args, message):
    code, out, err = cli(monkeypatch, capsys, *args)
    assert code == 2
    assert message in err
    assert "Traceback" not in out + err
    assert len(err.strip().splitlines()) == 1, err


def test_folder_that_is_not_a_model(monkeypatch, capsys, tmp_path):
    code, _, err = cli(monkeypatch, capsys, "run", "q", "--model", tmp_path)
    assert code == 2 and "no config.json" in err


def test_unreachable_hub_is_one_quick_error_and_a_cached_id_still_loads(monkeypatch, capsys):
    """An uncached hub id with no hub fails at once, not after the hub client's retries; a
    cached one goes on to transformers, which loads it offline."""
    import socket

    from latentmas import models

    def no_dns(*_):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(models.socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(models, "try_to_load_from_cache", lambda *_: None)
    # CI sets HF_HUB_OFFLINE; each branch is pinned here so the test reads the same anywhere.
    monkeypatch.setattr(models.hub_constants, "HF_HUB_OFFLINE", False)
    code, _, err = cli(monkeypatch, capsys, "run", "q", "--model", "someone/some-model")
    assert code == 2 and "cannot be reached" in err and len(err.strip().splitlines()) == 1

    monkeypatch.setattr(models.hub_constants, "HF_HUB_OFFLINE", True)
    code, _, err = cli(monkeypatch, capsys, "run", "q", "--model", "someone/some-model")
    assert code == 2 and "HF_HUB_OFFLINE is set" in err and len(err.strip().splitlines()) == 1

    monkeypatch.setattr(models, "try_to_load_from_cache", lambda *_: "/cache/config.json")
    assert models._resolve("someone/some-model") == ("someone/some-model", "someone/some-model", None)


def test_model_without_chat_template_is_refused_unless_one_is_given(
    monkeypatch, capsys, model_dir_without_template, tmp_path
):
    code, _, err = cli(monkeypatch, capsys, "run", "q", "--model", model_dir_without_template)
    assert code == 2 and "chat template" in err
    template = tmp_path / "chatml.jinja"
    from latentmas.tiny import CHATML_TEMPLATE

    template.write_text(CHATML_TEMPLATE)
    args = [
        "run",
        "q",
        "--model",
        model_dir_without_template,
        "--chat-template",
        template,
        "--max-new-tokens",
        "2",
    ]
    assert cli(monkeypatch, capsys, *args)[0] == 0


def test_malformed_data_file_exits_2(monkeypatch, capsys, model_dir, tmp_path):
    data = tmp_path / "broken.jsonl"
    data.write_text('{"question": "q", "answer": "1"}\n{oops\n')
    code, _, err = cli(
        monkeypatch, capsys, "eval", "--model", model_dir, "--data", data, "--out", tmp_path / "o"
    )
    assert code == 2 and "broken.jsonl:2" in err


def test_matrix_eval_then_report(monkeypatch, capsys, model_dir, tmp_path):
    out = tmp_path / "matrix"
    args = [
        "eval",
        "--model",
        model_dir,
        "--task",
        "gsm8k,humaneval",
        "--method",
        "all",
        "--limit",
        "2",
        "--max-new-tokens",
        "3",
        "--latent-steps",
        "2",
        "--out",
        out,
    ]
    code, stdout, _ = cli(monkeypatch, capsys, *args)
    assert code == 0, stdout
    for task in ("gsm8k", "humaneval"):
        for method in ("single", "text_mas", "latent_mas"):
            rows = (out / task / method / "results.jsonl").read_text().splitlines()
            assert len(rows) == 2
            assert json.loads(rows[0])["settings"]["temperature"] == 0.0
    code, stdout, _ = cli(monkeypatch, capsys, "report", out)
    assert code == 0
    report = (out / "report.md").read_text()
    assert "speedup_vs_text_mas" in report and "humaneval" in report and '"seed": 0' in report
    for png in ("accuracy_vs_tokens.png", "time_per_method.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_tasks_lists_all_nine(monkeypatch, capsys):
    code, out, _ = cli(monkeypatch, capsys, "tasks")
    assert code == 0
    for name in PAPER_TASKS:
        assert name in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["eval", "--method", "single,oracle"], "oracle"),
        (["eval", "--task", "gsm8k,medqa", "--data", "x.jsonl"], "one task"),
        (["eval", "--task", "aime2024"], "--data"),
        (["report", "/no/such/folder"], "not a folder"),
        (["inspect", "/no/such/trace.json"], "not found"),
        (["run", "q", "--latent-steps", "auto:x"], "latent steps"),
    ],
)
def test_more_bad_input_exits_2(monkeypatch, capsys, args, message):
    code, out, err = cli(monkeypatch, capsys, *args)
    assert code == 2 and message in err and "Traceback" not in out + err


@pytest.fixture(scope="session")
def other_model_dir(tmp_path_factory):
    """A second tiny model of another architecture and width."""
    from latentmas.tiny import tiny_model, tiny_tokenizer

    path = tmp_path_factory.mktemp("other-model")
    tok = tiny_tokenizer(300)
    tiny_model("qwen2", vocab_size=len(tok) + 8, hidden_size=48, seed=5).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.parametrize("method", ["latent_mas", "text_mas"])
def test_eval_with_agent_models(monkeypatch, capsys, model_dir, other_model_dir, tmp_path, method):
    out = tmp_path / method
    args = [
        "eval",
        "--model",
        model_dir,
        "--method",
        method,
        "--limit",
        "2",
        "--max-new-tokens",
        "3",
        "--agent-models",
        f"refiner={other_model_dir},solver={other_model_dir}",
        "--out",
        out,
    ]
    code, stdout, _ = cli(monkeypatch, capsys, *args)
    assert code == 0, stdout
    run = json.loads((out / "run.json").read_text())
    assert f"solver={other_model_dir}" in run["agent_models"]
    if method == "latent_mas":
        assert "map " in stdout and "shared tokens" in stdout  # the map's quality is printed
    row = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert [a["role"] for a in row["agents"]] == ["planner", "critic", "refiner", "solver"]


def test_agent_models_with_single_is_refused(monkeypatch, capsys, model_dir):
    code, _, err = cli(
        monkeypatch,
        capsys,
        "run",
        "q",
        "--model",
        model_dir,
        "--method",
        "single",
        "--agent-models",
        f"solver={model_dir}",
    )
    assert code == 2 and "agent-models" in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--memory", "latent_only"], "use --memory full"),
        (["--trace", "t.json"], "does not combine with --agent-models"),
    ],
)
def test_agent_models_refuse_options_they_cannot_honour(monkeypatch, capsys, model_dir, extra, message):
    code, _, err = cli(
        monkeypatch, capsys, "run", "q", "--model", model_dir, "--agent-models", f"solver={model_dir}", *extra
    )
    assert code == 2 and message in err


def test_agent_models_honour_realign(monkeypatch, capsys, model_dir, tmp_path):
    args = ["eval", "--model", model_dir, "--limit", "1", "--max-new-tokens", "2", "--realign", "norm"]
    code, stdout, _ = cli(
        monkeypatch, capsys, *args, "--agent-models", f"solver={model_dir}", "--out", tmp_path / "o"
    )
    assert code == 0, stdout
    assert json.loads((tmp_path / "o" / "run.json").read_text())["handoff"]["realign"] == "norm"


@pytest.mark.parametrize(
    "options, message",
    [
        ({"memory": "latent_only"}, "use --memory full"),
        ({"realign": "soft"}, "realigns with ridge, norm, none"),
    ],
)
def test_llamacpp_engine_refuses_options_it_cannot_honour(options, message):
    """Refused by the spec, before llama-cpp-python is even imported, so this runs without it."""
    from latentmas.errors import LatentMASError
    from latentmas.spec import RunSpec

    with pytest.raises(LatentMASError, match=message):
        RunSpec(engine="llamacpp", **options)


MARKUP = r"display \[x\] then arr[i] [/y] [bold]x"  # LaTeX display math, an index, a stray tag


def test_model_text_is_printed_verbatim_and_the_trace_is_saved(monkeypatch, capsys, model_dir, tmp_path):
    """Model text that looks like rich markup (`\\[x\\]`, `arr[i]`, `[/y]`) is shown exactly as
    written in `run`, `eval` and `inspect`, and cannot stop the trace from being written."""
    from latentmas import methods

    real = methods.Method.solve

    def solve_with_markup(self, questions, *args, **kwargs):
        answers = real(self, questions, *args, **kwargs)
        for answer in answers:
            answer.final_text = MARKUP
            if answer.trace is not None:
                answer.trace.final_text = MARKUP
            for step in answer.agents[:-1]:
                step.text = "planner says [red]stop[/red] \\[y\\]"
        return answers

    monkeypatch.setattr(methods.Method, "solve", solve_with_markup)
    trace = tmp_path / "t.json"
    code, out, err = cli(
        monkeypatch, capsys, "run", "q", "--model", model_dir, "--max-new-tokens", "2", "--trace", trace
    )
    assert code == 0, err
    assert MARKUP in out
    assert trace.is_file()
    code, out, err = cli(monkeypatch, capsys, "inspect", trace)
    assert code == 0 and MARKUP in out
    code, out, err = cli(
        monkeypatch, capsys, "run", "q", "--method", "text_mas", "--model", model_dir, "--max-new-tokens", "2"
    )
    assert code == 0 and "planner says [red]stop[/red] \\[y\\]" in out


def test_an_error_message_is_printed_verbatim(monkeypatch, capsys):
    code, _, err = cli(monkeypatch, capsys, "run", "q", "--model", r"./no/such/\[x\]/arr[i]")
    assert code == 2 and r"\[x\]/arr[i]" in err


def test_a_saved_trace_is_inspected_in_the_console_and_as_html(monkeypatch, capsys, model_dir, tmp_path):
    trace = tmp_path / "t.json"
    code, _, err = cli(
        monkeypatch,
        capsys,
        "run",
        "q",
        "--model",
        model_dir,
        "--max-new-tokens",
        "2",
        "--latent-steps",
        "2",
        "--trace",
        trace,
    )
    assert code == 0, err
    code, out, err = cli(monkeypatch, capsys, "inspect", trace, "--html", tmp_path / "t.html")
    assert code == 0, err
    assert "method: latent_mas" in out and "team=sequential" in out
    page = (tmp_path / "t.html").read_text()
    assert "latent_mas team=sequential" in page and "<img" in page


def test_run_says_which_dtype_ran(monkeypatch, capsys, model_dir):
    code, out, _ = cli(
        monkeypatch, capsys, "run", "q", "--model", model_dir, "--max-new-tokens", "2", "--dtype", "bfloat16"
    )
    assert code == 0 and "(bfloat16)" in out


def test_code_grading_refuses_before_loading_a_model_where_code_cannot_be_confined(monkeypatch, capsys):
    from latentmas.evaluation import sandbox

    monkeypatch.setattr(sandbox, "landlock_abi", lambda: 0)
    monkeypatch.delenv(sandbox.UNSAFE_ENV, raising=False)
    code, out, err = cli(monkeypatch, capsys, "eval", "--task", "humaneval", "--model", "./no/such/model")
    assert code == 2 and "needs Landlock" in err and "--unsafe-exec" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in out + err


def test_tasks_lists_thirteen_benchmarks(monkeypatch, capsys):
    code, out, _ = cli(monkeypatch, capsys, "tasks")
    assert code == 0
    for name in (*PAPER_TASKS, "aqua", "hellaswag", "bbh", "humaneval"):
        assert name in out


def test_bbh_eval_reports_each_subtask_and_their_macro_average(monkeypatch, capsys, model_dir, tmp_path):
    from pathlib import Path

    fixture = Path(__file__).parent / "fixtures" / "bbh.jsonl"
    out_dir = tmp_path / "bbh"
    args = ["eval", "--task", "bbh", "--data", fixture, "--method", "single", "--model", model_dir]
    code, out, _ = cli(monkeypatch, capsys, *args, "--max-new-tokens", "3", "--out", out_dir)
    assert code == 0, out
    summary = json.loads((out_dir / "summary.json").read_text())
    assert len(summary["by_group"]) == 8 and all(g["n"] == 1 for g in summary["by_group"].values())
    expected = sum(g["accuracy"] for g in summary["by_group"].values()) / 8
    assert summary["macro_accuracy"] == expected and "macro average over 8 subtasks" in out
    code, _, _ = cli(monkeypatch, capsys, "report", out_dir)
    assert code == 0 and "macro average" in (out_dir / "report.md").read_text()
