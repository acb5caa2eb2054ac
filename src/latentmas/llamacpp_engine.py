"""LatentMAS on llama.cpp, for GGUF models on CPU (optional: `pip install llama-cpp-python`).

On two CPU cores llama.cpp runs the embedded SmolLM2-135M about 4.5x faster per latent
step than our transformers engine (`benchmarks/llamacpp_latent.py`). The method is the
same: one KV cache per question, each agent's prompt appended to it, latent steps that
feed the realigned last hidden state back as an input embedding (llama.cpp's batch takes
embeddings; with embeddings enabled it returns the last layer's normed hidden state), and
only the last agent decodes. Questions run one after another (each in a fresh sequence),
so results are trivially batch-invariant; the realignment is the same ridge map, fitted on
the transformers copy of the same weights.
"""

from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path

import numpy as np

from .engine import Sampling
from .errors import LatentMASError
from .methods import AgentStep, Answer, LatentMAS
from .models import LoadedModel
from .roles import shared_conversation


class LlamaCppLatentMAS(LatentMAS):
    """`LatentMAS` whose rollouts and decoding run in llama.cpp on a GGUF file."""

    def __init__(
        self,
        lm: LoadedModel,
        gguf: Path,
        sampling: Sampling | None = None,
        topology: str = "sequential",
        latent_steps: int | str = 10,
        threads: int | None = None,
        context: int = 4096,
        memory: str = "full",
        realign: str = "ridge",
    ) -> None:
        if memory != "full":
            raise LatentMASError("the llama.cpp engine keeps the whole shared cache: use --memory full")
        if realign == "soft":
            raise LatentMASError("the llama.cpp engine realigns with ridge, norm or none, not soft")
        super().__init__(lm, sampling, topology, latent_steps, memory, realign)
        if self.guard is not None:
            raise LatentMASError("the llama.cpp engine takes a fixed number of latent steps, not auto")
        try:
            import llama_cpp
        except ImportError as exc:
            raise LatentMASError(
                "--engine llamacpp needs llama-cpp-python: pip install llama-cpp-python"
            ) from exc
        self._cpp = llama_cpp
        llama_cpp.llama_log_set(_SILENT, None)  # llama.cpp logs to stderr even when not verbose
        self.llm = llama_cpp.Llama(
            model_path=str(gguf),
            n_ctx=context,
            n_threads=threads or os.cpu_count(),  # llama-cpp-python's default uses half the cores
            n_batch=512,
            verbose=False,
            seed=self.sampling.seed,
        )
        self.n_embd, self.n_vocab = self.llm.n_embd(), self.llm.n_vocab()
        if self.n_embd != lm.model.config.hidden_size:
            raise LatentMASError(f"{gguf} does not hold the same model as {lm.name}")
        matrix = self.realigner.matrix
        self._matrix = None if matrix is None else matrix.float().cpu().numpy()
        self._batch = llama_cpp.llama_batch_init(1, self.n_embd, 1)
        self._rng = np.random.default_rng(self.sampling.seed)

    def describe(self) -> dict:
        return {**super().describe(), "engine": "llamacpp"}

    def close(self) -> None:
        self._cpp.llama_batch_free(self._batch)
        self.llm.close()

    # -- the three moves, on one sequence -------------------------------------------------
    def _prefill(self, tokens: list[int], want_hidden: bool) -> np.ndarray | None:
        """Read a prompt; -> the last position's hidden state when asked for.

        With embeddings on, llama.cpp outputs every position of a batch, so only the last
        token is read that way (about 12% less prefill time on the embedded model).
        """
        self._cpp.llama_set_embeddings(self.llm.ctx, False)
        if not want_hidden:
            self.llm.eval(tokens)
            return None
        if len(tokens) > 1:
            self.llm.eval(tokens[:-1])
        self._cpp.llama_set_embeddings(self.llm.ctx, True)
        self.llm.eval(tokens[-1:])
        return self._hidden()

    def _hidden(self) -> np.ndarray:
        pointer = self._cpp.llama_get_embeddings_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.n_embd,)).copy()

    def _realign(self, hidden: np.ndarray) -> np.ndarray:
        if self.realigner.mode == "none":
            return hidden
        x = hidden if self._matrix is None else hidden @ self._matrix
        return (x * (self.realigner.target_norm / max(float(np.linalg.norm(x)), 1e-6))).astype(np.float32)

    def _latent_steps(self, hidden: np.ndarray, steps: int) -> None:
        cpp, batch = self._cpp, self._batch
        cpp.llama_set_embeddings(self.llm.ctx, True)
        for _ in range(steps):
            embedding = self._realign(hidden)
            ctypes.memmove(batch.embd, embedding.ctypes.data, self.n_embd * 4)
            batch.n_tokens = 1
            batch.pos[0] = self.llm.n_tokens
            batch.n_seq_id[0] = 1
            batch.seq_id[0][0] = 0
            batch.logits[0] = 1
            if cpp.llama_decode(self.llm.ctx, batch) != 0:
                raise LatentMASError("llama.cpp could not take the latent step (context full?)")
            self.llm.n_tokens += 1  # a position with no token id; llama-cpp-python only counts it
            hidden = self._hidden()

    def _decode(self, first_logits: np.ndarray, on_token) -> list[int]:
        tokens, logits = [], first_logits
        for step in range(self.sampling.max_new_tokens):
            token = self._pick(logits)
            if token in self.stop_ids:
                break
            tokens.append(token)
            if on_token is not None and on_token(0, token) is False:
                break
            if step == self.sampling.max_new_tokens - 1:
                break
            self.llm.eval([token])
            logits = self._logits()
        return tokens

    def _logits(self) -> np.ndarray:
        return np.ctypeslib.as_array(self._cpp.llama_get_logits_ith(self.llm.ctx, -1), shape=(self.n_vocab,))

    def _pick(self, logits: np.ndarray) -> int:
        if self.sampling.temperature < 1e-4:
            return int(logits.argmax())
        z = logits.astype(np.float64) / self.sampling.temperature
        probs = np.exp(z - z.max())
        probs /= probs.sum()
        order = np.argsort(-probs)
        keep = np.cumsum(probs[order]) - probs[order] <= self.sampling.top_p
        kept = order[keep]
        return int(self._rng.choice(kept, p=probs[kept] / probs[kept].sum()))

    # -- the method ------------------------------------------------------------------------
    def _solve(self, questions: list[str], answer_format: str) -> list[Answer]:
        answers = []
        for row, question in enumerate(questions):
            self.llm.reset()
            self._cpp.llama_memory_clear(self._cpp.llama_get_memory(self.llm.ctx), True)
            segments = shared_conversation(self.lm.tokenizer, self.roles, question, answer_format)
            needed = (
                sum(map(len, segments))
                + self.latent_steps * (len(segments) - 1)
                + self.sampling.max_new_tokens
            )
            if needed > self.llm.n_ctx():
                raise LatentMASError("the question, latent steps and answer exceed the llama.cpp context")
            answer = Answer(final_text="")
            for index, (role, prompt) in enumerate(zip(self.roles, segments)):
                final = index == len(self.roles) - 1
                start = time.perf_counter()
                hidden = self._prefill(prompt, want_hidden=not final)
                prefilled = time.perf_counter()
                if final:
                    on_token = None if self._on_token is None else _for_row(self._on_token, row)
                    tokens = self._decode(self._logits().copy(), on_token)
                    text = self.lm.tokenizer.decode(tokens, skip_special_tokens=True).strip()
                    step = AgentStep(
                        role.name,
                        "text",
                        len(prompt),
                        len(tokens),
                        0,
                        prefilled - start,
                        0.0,
                        time.perf_counter() - prefilled,
                        text,
                    )
                    answer.final_text = text
                else:
                    self._latent_steps(hidden, self.latent_steps)
                    step = AgentStep(
                        role.name,
                        "latent",
                        len(prompt),
                        0,
                        self.latent_steps,
                        prefilled - start,
                        time.perf_counter() - prefilled,
                        0.0,
                    )
                answer.agents.append(step)
            answers.append(answer)
        return answers


try:  # a C callback that drops llama.cpp's log lines; kept alive for the process
    import llama_cpp as _llama_cpp

    _SILENT = _llama_cpp.llama_log_callback(lambda level, text, data: None)
except ImportError:  # the engine is optional
    _SILENT = None


def _for_row(callback, row: int):
    """The engine decodes one question at a time (its row 0); report tokens under `row`."""
    return lambda _row, token: callback(row, token)
