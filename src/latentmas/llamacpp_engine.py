"""LatentMAS on llama.cpp, for GGUF models on CPU (optional: `pip install llama-cpp-python`).

On two CPU cores llama.cpp runs the embedded SmolLM2-135M about 4.5x faster per latent
step than our transformers engine (`benchmarks/llamacpp_latent.py`). The method is the
same: one KV cache per question, each agent's prompt appended to it, latent steps that
feed the realigned last hidden state back as an input embedding (llama.cpp's batch takes
embeddings; with embeddings enabled it returns the last layer's normed hidden state), and
only the last agent decodes. Questions run one after another (each in a fresh sequence),
so results are trivially batch-invariant; the realignment is the same map, fitted on
the transformers copy of the same weights.

`LlamaCppEngine` implements the agent loop's `Engine` interface, so `LatentMAS` runs on it
unchanged: `LatentMAS(LlamaCppEngine(lm, gguf), ...)` (or `--engine llamacpp`).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .engine import Sampling
from .errors import LatentMASError
from .models import LoadedModel
from .realign import realigner_for
from .roles import stop_token_ids


class LlamaCppEngine:
    """The `Engine` interface over llama.cpp: one question (row) per memory, in one context.

    The agent loop, drift guard (`auto` latent steps) and observers (tracing) are the same
    as on the transformers engine; this class only makes the three moves.
    """

    max_batch = 1  # one sequence per context; the loop hands questions over one by one

    def __init__(
        self,
        lm: LoadedModel,
        gguf: Path,
        realign: str = "ridge",
        memory: str = "full",
        seed: int = 0,
        threads: int | None = None,
        context: int = 4096,
    ) -> None:
        if memory != "full":
            raise LatentMASError("the llama.cpp engine keeps the whole shared cache: use --memory full")
        if realign == "soft":
            raise LatentMASError("the llama.cpp engine realigns with ridge, norm or none, not soft")
        try:
            import llama_cpp
        except ImportError as exc:
            raise LatentMASError(
                "--engine llamacpp needs llama-cpp-python: pip install llama-cpp-python"
            ) from exc
        self.lm = lm
        self.realigner = realigner_for(lm.model, realign)
        self.stop_ids = stop_token_ids(lm.tokenizer, lm.model.generation_config.eos_token_id)
        self.cpp = llama_cpp
        llama_cpp.llama_log_set(SILENT, None)  # llama.cpp logs to stderr even when not verbose
        self.llm = llama_cpp.Llama(
            model_path=str(gguf),
            n_ctx=context,
            n_threads=threads or os.cpu_count(),  # llama-cpp-python's default uses half the cores
            n_batch=512,
            verbose=False,
            seed=seed,
        )
        self.n_embd, self.n_vocab = self.llm.n_embd(), self.llm.n_vocab()
        if self.n_embd != lm.model.config.hidden_size:
            raise LatentMASError(f"{gguf} does not hold the same model as {lm.name}")
        self.batch = llama_cpp.llama_batch_init(1, self.n_embd, 1)

    def close(self) -> None:
        self.cpp.llama_batch_free(self.batch)
        self.llm.close()

    def new_memory(self, batch_size: int) -> None:
        """A fresh context: llama.cpp's own KV cache is the memory."""
        if batch_size != 1:
            raise LatentMASError("the llama.cpp engine holds one question per memory")
        self.llm.reset()
        self.cpp.llama_memory_clear(self.cpp.llama_get_memory(self.llm.ctx), True)

    def prefill(
        self, memory: None, prompts: list[list[int]], shared_prefix: Sequence[int] = ()
    ) -> torch.Tensor:
        """Read a prompt; -> the last position's hidden state [1, hidden]. (`shared_prefix`
        is not used: one question at a time, there is no batch to share it across.)

        With embeddings on, llama.cpp outputs every position of a batch, so only the last
        token is read that way (about 12% less prefill time on the embedded model).
        """
        (tokens,) = prompts
        self.room_for(len(tokens))
        self.cpp.llama_set_embeddings(self.llm.ctx, False)
        if len(tokens) > 1:
            self.llm.eval(tokens[:-1])
        self.cpp.llama_set_embeddings(self.llm.ctx, True)
        self.llm.eval(tokens[-1:])
        return self.hidden()

    def hidden(self) -> torch.Tensor:
        pointer = self.cpp.llama_get_embeddings_ith(self.llm.ctx, -1)
        return torch.from_numpy(np.ctypeslib.as_array(pointer, shape=(self.n_embd,)).copy())[None]

    def latent_step(self, memory: None, embedding: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """Feed one thought [1, hidden] as an input embedding; -> the next hidden state."""
        self.room_for(1)
        cpp, batch = self.cpp, self.batch
        cpp.llama_set_embeddings(self.llm.ctx, True)
        vector = np.ascontiguousarray(embedding[0].float().numpy())
        ctypes.memmove(batch.embd, vector.ctypes.data, self.n_embd * 4)
        batch.n_tokens = 1
        batch.pos[0] = self.llm.n_tokens
        batch.n_seq_id[0] = 1
        batch.seq_id[0][0] = 0
        batch.logits[0] = 1
        if cpp.llama_decode(self.llm.ctx, batch) != 0:
            raise LatentMASError("llama.cpp could not take the latent step (context full?)")
        self.llm.n_tokens += 1  # a position with no token id; llama-cpp-python only counts it
        return self.hidden()

    def room_for(self, tokens: int) -> None:
        if self.llm.n_tokens + tokens > self.llm.n_ctx():
            raise LatentMASError("the question, latent steps and answer exceed the llama.cpp context")

    def decode(
        self, memory: None, hidden: torch.Tensor, sampling: Sampling, on_token, row_seeds
    ) -> list[list[int]]:
        """Generate from the last position's logits (the prompt's last token was just read)."""
        self.room_for(sampling.max_new_tokens)
        rng = np.random.default_rng(row_seeds[0] if row_seeds else sampling.seed)
        tokens, logits = [], self.logits().copy()
        for step in range(sampling.max_new_tokens):
            token = self.pick(logits, sampling, rng)
            if token in self.stop_ids:
                break
            tokens.append(token)
            if on_token is not None and on_token(0, token) is False:
                break
            if step == sampling.max_new_tokens - 1:
                break
            self.llm.eval([token])
            logits = self.logits()
        return [tokens]

    def keep_latent_only(self, memory: None) -> None:
        raise LatentMASError("the llama.cpp engine keeps the whole shared cache: use --memory full")

    def logits(self) -> np.ndarray:
        return np.ctypeslib.as_array(self.cpp.llama_get_logits_ith(self.llm.ctx, -1), shape=(self.n_vocab,))

    @staticmethod
    def pick(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> int:
        if sampling.temperature < 1e-4:
            return int(logits.argmax())
        z = logits.astype(np.float64) / sampling.temperature
        probs = np.exp(z - z.max())
        probs /= probs.sum()
        order = np.argsort(-probs)
        keep = np.cumsum(probs[order]) - probs[order] <= sampling.top_p
        kept = order[keep]
        return int(rng.choice(kept, p=probs[kept] / probs[kept].sum()))


try:  # a C callback that drops llama.cpp's log lines; kept alive for the process
    import llama_cpp as _llama_cpp

    SILENT = _llama_cpp.llama_log_callback(lambda level, text, data: None)
except ImportError:  # the engine is optional
    SILENT = None
