"""The efficiency benchmark runs end to end (a random-weight model, a few tokens), so that a
change to the engine cannot silently break the script that measures it."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from latentmas.errors import LatentMASError
from latentmas.tiny import tiny_loaded

ROOT = Path(__file__).resolve().parents[1]


def test_efficiency_benchmark_writes_its_table(tmp_path, capsys, benchmark_script):
    config = tiny_loaded("qwen2").model.config.to_dict()
    (tmp_path / "tiny.json").write_text(json.dumps(config))
    module = benchmark_script("efficiency")
    module.main(
        [
            *("--config", str(tmp_path / "tiny.json"), "--dtype", "float32,bfloat16", "--device", "cpu"),
            *("--limit", "2", "--max-new-tokens", "3", "--latent-steps", "2", "--batch-sizes", "1,2"),
            *("--topologies", "sequential", "--micro-context", "12", "--question-once"),
            *("--out", str(tmp_path / "out")),
        ]
    )
    report = json.loads((tmp_path / "out" / "efficiency.json").read_text())
    methods = {(r["method"], r["batch_size"]) for r in report["rows"]}
    assert methods == {
        (m, b) for m in ("single", "text_mas", "latent_mas", "latent_mas[once]") for b in (1, 2)
    }
    assert [m["batch_size"] for m in report["micro"]] == [1, 2]
    assert all(m["latent_step_ms"] > 0 and m["decode_step_ms"] > 0 for m in report["micro"])
    assert [p["batch_size"] for p in report["prefix"]] == [1, 2]
    assert all(p["prefix_tokens"] > 0 and p["prefill_shared_prefix_s"] > 0 for p in report["prefix"])
    assert report["dtype"] == "float32" and set(report["by_dtype"]) == {"float32", "bfloat16"}
    assert len(report["dtype_speedups"]) == len(report["rows"])
    assert all(r["speedup_bfloat16_vs_float32"] > 0 for r in report["dtype_speedups"])
    printed = capsys.readouterr().out
    assert "speedup_vs_text_mas" in printed and "speed-up over float32" in printed


def test_a_benchmark_refuses_a_model_it_cannot_load_in_one_line(tmp_path):
    """Bad input to a benchmark script is one line and exit 2, as in the CLI; the output
    folder is not created."""
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "efficiency.py"),
            "--model",
            str(tmp_path / "missing.gguf"),
        ]
        + ["--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_an_engine_that_cannot_run_the_model_fails_before_any_timing(tmp_path, capsys, benchmark_script):
    """A random-weight model has no GGUF for llama.cpp: the benchmark stops before its first
    run on transformers instead of after the whole grid, when nothing would be written."""
    config = tiny_loaded("qwen2").model.config.to_dict()
    (tmp_path / "tiny.json").write_text(json.dumps(config))
    module = benchmark_script("efficiency")
    with pytest.raises(LatentMASError):
        module.main(
            ["--config", str(tmp_path / "tiny.json"), "--engine", "transformers,llamacpp", "--device", "cpu"]
            + ["--limit", "1", "--max-new-tokens", "2", "--out", str(tmp_path / "out")]
        )
    assert "[transformers" not in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs llama-cpp-python (optional)")
def test_the_llamacpp_engine_is_timed_on_latent_mas_beside_transformers(tmp_path, capsys, benchmark_script):
    """llama.cpp runs latent_mas only, so its grid has no TextMAS row to compare with; the
    report says so instead of failing after every run was timed."""
    module = benchmark_script("efficiency")
    module.main(
        ["--engine", "transformers,llamacpp", "--limit", "1", "--max-new-tokens", "2", "--latent-steps", "1"]
        + ["--batch-sizes", "1", "--topologies", "sequential", "--no-micro", "--out", str(tmp_path / "out")]
    )
    report = json.loads((tmp_path / "out" / "efficiency.json").read_text())
    on_llamacpp = next(iter(report["by_engine"].values()))["llamacpp"]
    assert [r["method"] for r in on_llamacpp["rows"]] == ["latent_mas"]
    assert on_llamacpp["speedup_vs_text_mas"] is None and report["speedup_vs_text_mas"] > 0
    assert not (tmp_path / "out" / "efficiency.partial.json").exists()
