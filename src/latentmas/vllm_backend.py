"""Final-agent decoding in stock vLLM, through its prompt-embeddings input.

The shared KV cache is a pure function of the sequence of input embeddings fed into it
(prompt tokens' embeddings and realigned latent thoughts, in order). So instead of handing
vLLM our cache, we hand it that sequence as `{"prompt_embeds": tensor}` and vLLM rebuilds
the same cache with its own kernels, then decodes. Latent rollouts stay in transformers.

Only stock vLLM is needed (`pip install latentmas[vllm]`), with `enable_prompt_embeds=True`;
`tensor_parallel_size` spreads a large model over several GPUs, and vLLM's Ray executor
(`distributed_executor_backend="ray"`) over several nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from .engine import Sampling
from .errors import LatentMASError
from .models import LoadedModel


@dataclass
class Segment:
    """Input embeddings one agent appended for one question: [length, hidden]."""

    kind: Literal["prompt", "latent"]
    embeds: torch.Tensor


@dataclass
class EmbeddingLog:
    """Per question, the segments in the order they entered the shared cache."""

    rows: list[list[Segment]] = field(default_factory=list)

    def __init__(self, batch_size: int) -> None:
        self.rows = [[] for _ in range(batch_size)]
        self._latent: list[list[torch.Tensor]] = [[] for _ in range(batch_size)]

    def add_prompts(self, embeds: list[torch.Tensor]) -> None:
        self.close_latent()
        for row, e in enumerate(embeds):
            self.rows[row].append(Segment("prompt", e))

    def on_step(self, step: int, hidden: torch.Tensor, embedding: torch.Tensor, active: torch.Tensor) -> None:
        for row in active.nonzero().squeeze(-1).tolist():
            self._latent[row].append(embedding[row])

    def close_latent(self) -> None:
        for row, vectors in enumerate(self._latent):
            if vectors:
                self.rows[row].append(Segment("latent", torch.stack(vectors)))
                vectors.clear()


def assemble_prompt_embeds(segments: list[Segment]) -> torch.Tensor:
    """[total, hidden]: every segment in cache order, the final agent's prompt last.

    Only the `full` memory mode can be rebuilt this way: under `latent_only` the kept
    thoughts' keys and values were computed while the dropped prompts were still visible,
    which re-reading the thoughts alone cannot reproduce.
    """
    if not segments or segments[-1].kind != "prompt":
        raise LatentMASError("the last segment must be the final agent's prompt")
    parts = [s.embeds for s in segments]
    hidden = {p.shape[-1] for p in parts}
    if len(hidden) != 1:
        raise LatentMASError(f"segments disagree on the hidden size: {sorted(hidden)}")
    return torch.cat(parts, dim=0)


class FinalAgentInVLLM:
    """`LatentMAS(decoder=FinalAgentInVLLM(VLLMDecoder(...), lm))`: a final decoder for the
    agent loop. Per batch it watches what enters the shared cache (prompt embeddings and
    thoughts) and, for the final agent, hands vLLM that sequence to rebuild and decode."""

    def __init__(self, decoder, lm: LoadedModel) -> None:
        self.decoder, self.lm = decoder, lm

    def __call__(self, questions: list[str], method: dict) -> EmbeddingWatch:
        return EmbeddingWatch(EmbeddingLog(len(questions)), self.decoder, self.lm)


@dataclass
class EmbeddingWatch:
    """One batch's observer: logs embeddings, then decodes the final agent in vLLM."""

    log: EmbeddingLog
    decoder: VLLMDecoder
    lm: LoadedModel

    def begin_agent(self, role: str, prompts: list[list[int]]) -> None:
        embed, device = self.lm.model.get_input_embeddings(), self.lm.model.device
        self.log.add_prompts([embed(torch.tensor(p, device=device)) for p in prompts])

    def on_step(self, step: int, hidden: torch.Tensor, embedding: torch.Tensor, active: torch.Tensor) -> None:
        self.log.on_step(step, hidden, embedding, active)

    def finish(self, answers: list) -> None:
        pass

    def decode_final(self, prompts: list[list[int]], sampling: Sampling) -> list[tuple[str, int]]:
        return self.decoder.generate([assemble_prompt_embeds(row) for row in self.log.rows], sampling)


class VLLMDecoder:
    """Stock vLLM, loaded once, decoding from prompt embeddings."""

    def __init__(self, model: str, tensor_parallel_size: int = 1, dtype: str = "auto") -> None:
        if not torch.cuda.is_available():
            raise LatentMASError("the vLLM decoder (VLLMDecoder) needs a CUDA GPU; none is available here")
        try:
            from vllm import LLM
        except ImportError as exc:
            raise LatentMASError(
                "the vLLM decoder (VLLMDecoder) needs vLLM: pip install 'latentmas[vllm]'"
            ) from exc
        self.llm = LLM(
            model=model, tensor_parallel_size=tensor_parallel_size, dtype=dtype, enable_prompt_embeds=True
        )

    def generate(self, prompt_embeds: list[torch.Tensor], sampling: Sampling) -> list[tuple[str, int]]:
        """-> (text, number of generated tokens) per prompt."""
        from vllm import SamplingParams

        params = SamplingParams(
            max_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seed,
        )
        outputs = self.llm.generate(
            [{"prompt_embeds": e.cpu()} for e in prompt_embeds], params, use_tqdm=False
        )
        return [(o.outputs[0].text.strip(), len(o.outputs[0].token_ids)) for o in outputs]
