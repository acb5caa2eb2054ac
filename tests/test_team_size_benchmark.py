"""benchmarks/team_size.py: the growth exponent is a log-log slope, and a small grid runs end
to end on a tiny model (each run in its own process), resumes, and writes its table."""

from __future__ import annotations

import json
import math
import sys

import pytest

from latentmas.errors import LatentMASError
from latentmas.tiny import tiny_loaded


def test_the_exponent_is_the_slope_on_log_log(benchmark_script):
    team_size = benchmark_script("team_size")
    sizes = [4, 8, 16, 32]
    assert team_size.exponent([(n, 3.0 * n) for n in sizes]) == pytest.approx(1.0)
    assert team_size.exponent([(n, 0.5 * n**2) for n in sizes]) == pytest.approx(2.0)
    assert team_size.exponent([(n, 7.0) for n in sizes]) == pytest.approx(0.0, abs=1e-12)
    assert team_size.exponent([(4, 1.0)]) is None


def test_teams_of_each_size_are_well_formed(benchmark_script):
    team_size = benchmark_script("team_size")
    for n in (2, 5, 32):
        chain, hierarchy = team_size.chain(n), team_size.hierarchy(n)
        assert len(chain.agents) == len(hierarchy.agents) == n and chain.chain
        assert all(hierarchy.reads(i) == () for i in range(n - 1))
        assert hierarchy.reads(n - 1) == tuple(range(n - 1))


def test_a_small_grid_runs_resumes_and_writes_its_table(benchmark_script, tmp_path, monkeypatch):
    folder = tmp_path / "model"
    lm = tiny_loaded("llama")
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    team_size = benchmark_script("team_size")
    out = tmp_path / "out"
    argv = ["--model", str(folder), "--dtype", "float32", "--sizes", "2,3", "--shapes", "chain"]
    argv += ["--batch-sizes", "2", "--questions", "2", "--latent-steps", "2", "--message-tokens", "3"]
    argv += ["--max-new-tokens", "3", "--fit-from", "2", "--out", str(out)]
    if team_size.GSM8K_FILE.is_file():
        argv += ["--data", str(team_size.GSM8K_FILE)]
    assert team_size.main(argv) == 0
    rows = json.loads((out / "team_size.json").read_text())["rows"]
    assert {(r["n"], r["method"]) for r in rows} == {(n, m) for n in (2, 3) for m in team_size.METHODS}
    by = {(r["n"], r["method"]): r for r in rows}
    for row in rows:
        assert row["seconds_per_question"] > 0 and 0 <= row["accuracy"] <= 1
        assert math.isclose(row["memory_kv_mib"], team_size.kv_mib(lm, row["memory_columns"], 2))
        if sys.platform == "linux":
            assert row["peak_rss_mib"] >= row["peak_added_mib"] >= 0
    assert by[3, "latent_mas"]["memory_columns"] > by[2, "latent_mas"]["memory_columns"]
    assert by[3, "latent_mas[latent_only]"]["memory_columns"] < by[3, "latent_mas"]["memory_columns"]
    assert by[3, "text_mas"]["decoded_tokens"] > by[2, "text_mas"]["decoded_tokens"]
    assert "exponent" in (out / "team_size.md").read_text()
    assert (out / "team_size.png").read_bytes()[:4] == b"\x89PNG"

    def no_new_runs(*args, **kwargs):
        raise AssertionError("a finished run ran again")

    monkeypatch.setattr(team_size.subprocess, "run", no_new_runs)
    assert team_size.main(argv) == 0  # every run is in runs.jsonl
    assert team_size.main([*argv, "--before", str(out / "runs.jsonl")]) == 0
    with pytest.raises(LatentMASError, match="no such runs file"):
        team_size.main([*argv, "--before", str(tmp_path / "missing.jsonl")])


@pytest.mark.skipif(sys.platform != "linux", reason="the peak is read from Linux's /proc")
def test_the_peak_is_the_runs_own_not_the_processs(benchmark_script):
    team_size = benchmark_script("team_size")
    block = bytearray(400 * 2**20)
    block[::4096] = b"x" * len(block[::4096])  # touch every page, so it is resident
    assert team_size.resident_mib("VmHWM") > team_size.resident_mib("VmRSS") - 1 >= 400
    del block
    team_size.reset_peak()
    assert team_size.resident_mib("VmHWM") < team_size.resident_mib("VmRSS") + 50
