"""LatentMAS on llama.cpp, for GGUF models on CPU (optional: `pip install llama-cpp-python`).

llama.cpp runs quantized weights; on CPU its latent and decode steps cost less than our
fp32 transformers engine's (`benchmarks/llamacpp_latent.py`), its prompt reading more
with the portable build the README installs. The method is the
same: one KV cache per question, each agent's prompt appended to it, latent steps that
feed the realigned last hidden state back as an input embedding (llama.cpp's batch takes
embeddings; with embeddings enabled it returns the last layer's normed hidden state), and
only the last agent decodes. The realignment is the same map, fitted on the transformers
copy of the same weights.

A batch of questions runs together: row i is sequence i of one llama.cpp context, each
sequence in its own KV stream (`kv_unified` off), so rows need no padding, a row attends
only to its own cells, and its results do not depend on the other rows.

`LlamaCppEngine` implements the `Engine` protocol, so `LatentMAS` runs on it unchanged:
`LatentMAS(LlamaCppEngine(lm, gguf), ...)` (or `--engine llamacpp`). Tokens are chosen by
the same sampler as on every engine (`sampling.next_tokens`, on llama.cpp's logits).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import LatentMASError
from ..models import LoadedModel, stop_token_ids
from .forward import PrefixStore
from .protocol import ALL, CAPABILITIES, Decoding, ModelEngine, Reading, require
from .realign import realigner_for
from .sampling import generators, next_tokens
from .views import MemoryView

CHUNK = 512  # tokens per llama_decode call when reading prompts


@dataclass
class RowByRow:
    """A realigner applied to one row at a time.

    llama.cpp computes each sequence the same whatever else is in its batch (we checked:
    hidden states bit-identical at batch 1 and 8), but torch's [batch, hidden] x [hidden,
    hidden] product rounds differently for one row and for eight; row by row, a question's
    thoughts are bit-identical alone and in any batch, so its answer is too.
    """

    realign: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.realign(row[None]) for row in hidden])


@dataclass
class Rows:
    """One batch's memory in llama.cpp: row i is sequence i of the engine's context."""

    positions: list[int]  # each row's next position
    logits: np.ndarray  # [batch, vocab] each row's newest next-token logits
    hidden: torch.Tensor  # [batch, hidden] each row's newest last-layer state


class LlamaCppEngine(ModelEngine):
    """The `Engine` interface over llama.cpp: a batch of questions in one context.

    The agent loop, drift guard (`auto` latent steps) and observers (tracing) are the same
    as on the transformers engine; this class only makes the three moves. The context is
    sized for the largest batch seen so far (`context` positions per row).
    """

    name = "llamacpp"
    max_batch = None

    def __init__(
        self,
        lm: LoadedModel,
        gguf: Path,
        threads: int | None = None,
        context: int = 4096,
        share_prefixes: bool = True,
    ) -> None:
        try:
            import llama_cpp
        except ImportError as exc:
            raise LatentMASError(
                "--engine llamacpp needs llama-cpp-python: pip install llama-cpp-python"
            ) from exc
        self.lm = lm
        self.realigners: dict[str, RowByRow] = {}
        self.stop_ids = stop_token_ids(lm.tokenizer, lm.model.generation_config.eos_token_id)
        self.cpp = cpp = llama_cpp
        cpp.llama_log_set(SILENT, None)  # llama.cpp logs to stderr even when not verbose
        cpp.llama_backend_init()
        self.model = cpp.llama_model_load_from_file(str(gguf).encode(), cpp.llama_model_default_params())
        if not self.model:
            raise LatentMASError(f"llama.cpp could not load {gguf}")
        self.n_embd = cpp.llama_model_n_embd(self.model)
        self.n_vocab = cpp.llama_vocab_n_tokens(cpp.llama_model_get_vocab(self.model))
        if self.n_embd != lm.model.config.hidden_size:
            cpp.llama_model_free(self.model)
            raise LatentMASError(f"{gguf} does not hold the same model as {lm.name}")
        self.context, self.threads = context, threads or os.cpu_count()
        self.rows_held = 0  # sequences the current context holds (0: none yet)
        self.prefixes: dict[tuple[int, ...], ctypes.Array] = {}  # shared prompt prefix -> its KV state
        self.share_prefixes = share_prefixes
        self.ctx = self.tokens = self.thoughts = None

    def open(self, rows: int) -> None:
        """(Re)create the context for `rows` sequences, each in its own KV stream."""
        self.free_context()
        cpp = self.cpp
        if rows > cpp.llama_max_parallel_sequences():
            raise LatentMASError(
                f"llama.cpp holds at most {cpp.llama_max_parallel_sequences()} sequences: use a smaller --batch-size"
            )
        params = cpp.llama_context_default_params()
        params.n_ctx = self.context * rows
        params.n_batch = params.n_ubatch = CHUNK
        params.n_seq_max = rows
        params.kv_unified = False
        params.flash_attn_type = cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as llama-cpp-python's default
        params.n_threads = params.n_threads_batch = self.threads  # the default uses half the cores
        self.ctx = cpp.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise LatentMASError(f"llama.cpp could not make a context for {rows} rows")
        self.tokens = cpp.llama_batch_init(CHUNK, 0, 1)
        self.thoughts = cpp.llama_batch_init(rows, self.n_embd, 1)
        self.rows_held = rows
        self.prefixes.clear()  # a saved sequence state loads only into a context like its own

    def free_context(self) -> None:
        if self.ctx is not None:
            self.cpp.llama_batch_free(self.tokens)
            self.cpp.llama_batch_free(self.thoughts)
            self.cpp.llama_free(self.ctx)
            self.ctx = self.tokens = self.thoughts = None
            self.rows_held = 0

    def close(self) -> None:
        self.free_context()
        if self.model is not None:
            self.cpp.llama_model_free(self.model)
            self.model = None

    def __del__(self) -> None:
        # At interpreter exit llama_cpp's functions may already be gone; the OS frees them then.
        with contextlib.suppress(Exception):
            self.close()

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def new_memory(self, batch_size: int, view: MemoryView | None = None) -> Rows:
        """Empty sequences 0..batch_size-1: llama.cpp's own KV cache is the memory."""
        if view is not None and not view.identity:
            require(self.name, "views")
        if batch_size > self.rows_held:
            self.open(batch_size)
        else:
            self.cpp.llama_memory_clear(self.cpp.llama_get_memory(self.ctx), True)
        logits = np.zeros((batch_size, self.n_vocab), dtype=np.float32)
        return Rows([0] * batch_size, logits, torch.zeros(batch_size, self.n_embd))

    def prefill(self, memory: Rows, prompts: list[list[int]], reading: Reading = ALL) -> None:
        """Read one prompt per row (each row's last hidden state goes to `memory.hidden`).

        In a fresh memory, rows whose prompt begins with `shared_prefix` get its KV copied
        from the first time it was read (`llama_state_seq_*`) and read only the rest.

        Each row's prompt but its last token is read on its own (a batch mixing sequences of
        unequal length is split by llama.cpp into many small pieces, which took 18% longer);
        with embeddings on, llama.cpp outputs every position, so the last tokens of all rows
        are read together in a batch of their own (about 12% less prefill time).
        """
        if reading.reads is not None:
            require(self.name, "partial_reads")
        if not all(prompts):
            raise LatentMASError("empty prompt")
        self.room_for(memory, [len(p) for p in prompts])
        self.cpp.llama_set_embeddings(self.ctx, False)
        if self.share_prefixes and not any(memory.positions):
            prompts = self.start_from_prefix(memory, prompts, tuple(reading.shared_prefix))
        for row, prompt in enumerate(prompts):  # row by row: rows of unequal length split badly
            self.read_row(row, memory.positions[row], prompt[:-1])
        self.cpp.llama_set_embeddings(self.ctx, True)
        last = [(row, memory.positions[row] + len(p) - 1, p[-1]) for row, p in enumerate(prompts)]
        self.run_tokens(last, outputs=True)
        for row, p in enumerate(prompts):
            memory.positions[row] += len(p)
        memory.hidden = self.read(memory, list(range(len(prompts))))

    def last_hidden(self, memory: Rows) -> torch.Tensor:
        return memory.hidden

    def start_from_prefix(
        self, memory: Rows, prompts: list[list[int]], prefix: tuple[int, ...]
    ) -> list[list[int]]:
        """Put `prefix`'s KV into the sequences of the rows whose prompt begins with it (and
        continues); -> what each row still has to read. Like the transformers engine's
        `PrefixStore`, a row that lacks the prefix reads its whole prompt."""
        width = len(prefix)
        uses = PrefixStore.rows_using(prompts, prefix)
        if uses is None:
            return prompts
        cpp = self.cpp
        if prefix not in self.prefixes:
            if len(self.prefixes) >= PrefixStore.MAX_KEPT:
                self.prefixes.pop(next(iter(self.prefixes)))
            row = uses.index(True)
            self.read_row(row, 0, prefix)
            state = (ctypes.c_uint8 * cpp.llama_state_seq_get_size(self.ctx, row))()
            cpp.llama_state_seq_get_data(self.ctx, state, len(state), row)
            self.prefixes[prefix] = state
            cpp.llama_memory_seq_rm(cpp.llama_get_memory(self.ctx), row, -1, -1)
        state = self.prefixes[prefix]
        for row, used in enumerate(uses):
            if used:
                if cpp.llama_state_seq_set_data(self.ctx, state, len(state), row) == 0:
                    raise LatentMASError("llama.cpp could not copy the shared prompt prefix")
                memory.positions[row] = width
        return [p[width:] if used else p for p, used in zip(prompts, uses)]

    def append_thoughts(self, memory: Rows, vectors: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        return self.feed(memory, vectors, active)

    def append_vectors(self, memory: Rows, vectors: list[torch.Tensor]) -> None:
        """Each row's vectors one position at a time (llama.cpp's rows are independent)."""
        for index in range(max(v.shape[0] for v in vectors)):
            active = torch.tensor([v.shape[0] > index for v in vectors])
            step = torch.stack(
                [v[index] if v.shape[0] > index else v.new_zeros(self.n_embd) for v in vectors]
            )
            self.feed(memory, step, active)

    def realigner(self, mode: str) -> RowByRow:
        if mode not in CAPABILITIES[self.name].realign:
            raise LatentMASError(f"the llama.cpp engine realigns with ridge, norm or none, not {mode}")
        if mode not in self.realigners:
            self.realigners[mode] = RowByRow(realigner_for(self.lm.model, mode))
        return self.realigners[mode]

    def feed(self, memory: Rows, embedding: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """Feed one input embedding per active row [batch, hidden]; -> the next hidden
        states (rows that are not active get zeros, which the loop ignores; `memory.hidden`
        keeps their last one)."""
        rows = active.nonzero().flatten().tolist()
        if not rows:
            return torch.zeros(len(memory.positions), self.n_embd)
        self.room_for(memory, [1 if row in rows else 0 for row in range(len(memory.positions))])
        cpp, batch = self.cpp, self.thoughts
        cpp.llama_set_embeddings(self.ctx, True)
        vectors = np.ascontiguousarray(embedding[rows].float().cpu().numpy())
        ctypes.memmove(batch.embd, vectors.ctypes.data, vectors.nbytes)
        for index, row in enumerate(rows):
            self.place(batch, index, row, memory.positions[row], output=True)
        batch.n_tokens = len(rows)
        if cpp.llama_decode(self.ctx, batch) != 0:
            raise LatentMASError("llama.cpp could not take the latent step")
        for row in rows:
            memory.positions[row] += 1
        hidden = self.read(memory, rows)
        memory.hidden = torch.where(active[:, None].to(hidden.device), hidden, memory.hidden)
        return hidden

    def decode(self, memory: Rows, decoding: Decoding) -> list[list[int]]:
        """Generate from each row's newest logits; a row leaves the batch at its stop token."""
        sampling, row_seeds, on_token = decoding.sampling, decoding.row_seeds, decoding.on_token
        if decoding.on_state is not None:
            require(self.name, "decode_states")
        batch = len(memory.positions)
        self.room_for(memory, [sampling.max_new_tokens] * batch)
        seeds = row_seeds if row_seeds is not None else [sampling.seed] * batch
        drawing = generators(sampling, seeds)
        outputs: list[list[int]] = [[] for _ in range(batch)]
        active = list(range(batch))
        self.cpp.llama_set_embeddings(self.ctx, False)
        for step in range(sampling.max_new_tokens):
            chosen = []
            for row in active:
                logits = torch.from_numpy(memory.logits[row])[None]
                token = int(next_tokens(logits, sampling, drawing and [drawing[row]]))
                if token in self.stop_ids:
                    continue
                outputs[row].append(token)
                if on_token is not None and on_token(row, token) is False:
                    continue
                chosen.append((row, token))
            if not chosen or step == sampling.max_new_tokens - 1:
                break  # the last token needs no forward pass
            self.run_tokens([(row, memory.positions[row], token) for row, token in chosen], outputs=True)
            active = [row for row, _ in chosen]
            for row in active:
                memory.positions[row] += 1
            self.keep_logits(memory, active)
        return outputs

    def keep_latent_only(self, memory: Rows) -> None:
        require(self.name, "latent_only")

    def place(self, batch, index: int, row: int, position: int, output: bool) -> None:
        batch.pos[index] = position
        batch.n_seq_id[index] = 1
        batch.seq_id[index][0] = row
        batch.logits[index] = output

    def read_row(self, row: int, position: int, tokens: Sequence[int]) -> None:
        """Read one row's tokens from `position` on, in chunks, keeping no output."""
        for start in range(0, len(tokens), CHUNK):
            chunk = tokens[start : start + CHUNK]
            self.run_tokens([(row, position + start + i, t) for i, t in enumerate(chunk)], outputs=False)

    def run_tokens(self, entries: Iterable[tuple[int, int, int]], outputs: bool) -> None:
        """One llama_decode of (row, position, token) entries; `outputs`: every entry's
        logits (and hidden state, with embeddings on) are kept, in the entries' order."""
        batch = self.tokens
        count = 0
        for index, (row, position, token) in enumerate(entries):
            batch.token[index] = token
            self.place(batch, index, row, position, outputs)
            count += 1
        batch.n_tokens = count
        if self.cpp.llama_decode(self.ctx, batch) != 0:
            raise LatentMASError("llama.cpp could not read the tokens")

    def read(self, memory: Rows, rows: list[int]) -> torch.Tensor:
        """The hidden states of the last call's outputs (one per row of `rows`, in order)
        as [batch, hidden], and their logits into `memory`."""
        hidden = np.zeros((len(memory.positions), self.n_embd), dtype=np.float32)
        for index, row in enumerate(rows):
            pointer = self.cpp.llama_get_embeddings_ith(self.ctx, index)
            hidden[row] = np.ctypeslib.as_array(pointer, shape=(self.n_embd,))
        self.keep_logits(memory, rows)
        return torch.from_numpy(hidden)

    def keep_logits(self, memory: Rows, rows: list[int]) -> None:
        for index, row in enumerate(rows):
            pointer = self.cpp.llama_get_logits_ith(self.ctx, index)
            memory.logits[row] = np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))

    def room_for(self, memory: Rows, tokens: list[int]) -> None:
        if any(p + t > self.context for p, t in zip(memory.positions, tokens)):
            raise LatentMASError(
                f"the question, latent steps and answer exceed the llama.cpp context ({self.context} per row)"
            )


try:  # a C callback that drops llama.cpp's log lines; kept alive for the process
    import llama_cpp as _llama_cpp

    SILENT = _llama_cpp.llama_log_callback(lambda level, text, data: None)
except ImportError:  # the engine is optional
    SILENT = None
