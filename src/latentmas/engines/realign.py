"""Map a last-layer hidden state back into the model's input-embedding space.

The last layer's output lives where the LM head reads it, not where token embeddings
live; fed back unchanged it is out of distribution. LatentMAS's fix is a linear map
fitted in closed form (ridge regression from output-embedding rows to input-embedding
rows), then a rescale to the typical input-embedding norm:

    W = (W_out^T W_out + lam I)^-1 W_out^T W_in,   e = h W * (mean ||W_in row|| / ||h W||)

`norm` keeps only the rescale and `none` feeds the hidden state as it is.

When the LM head is the input embedding (tied weights: Qwen3-0.6B to 4B, Qwen2.5-0.5B, and the
embedded Qwen2.5-Coder, whose GGUF stores two quantised copies of one matrix) the ridge map is
the identity up to lam (||W - I|| / ||I|| = 0.006 there), so `ridge` is the `norm` rescale.

`soft` reads the hidden state through the LM head and feeds the expected input embedding
under that next-token distribution, e = softmax(h W_out^T) W_in: a convex mixture of real
token embeddings, so the thought stays where the model's inputs live ("soft thinking").
It costs one LM-head product per step (as a decode step does).
"""

from __future__ import annotations

import hashlib
import logging
import weakref
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import PreTrainedModel

from ..errors import LatentMASError
from ..paths import cache_dir

RealignMode = Literal["ridge", "norm", "none", "soft"]
REALIGN_MODES: tuple[str, ...] = ("ridge", "norm", "none", "soft")

log = logging.getLogger(__name__)


@dataclass
class Realigner:
    """hidden state [batch, hidden] -> input embedding [batch, hidden].

    The product and the rescale run in float32 whatever the model's dtype (a bf16 product
    over `hidden` terms loses the small components that distinguish thoughts), on the
    hidden state's device (with layers spread over GPUs, the last layer and the embedding
    can sit on different ones); the result is cast back to the hidden state's dtype.
    """

    mode: str
    target_norm: float
    matrix: torch.Tensor | None = None  # [hidden, hidden] float32, only for ridge
    head: torch.nn.Module | None = None  # soft: the LM head ...
    embeddings: torch.Tensor | None = None  # ... and the input embeddings [vocab, hidden]
    softcap: float | None = None  # soft: Gemma-style final logit soft-capping

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return hidden
        if self.mode == "soft":
            return self._soft(hidden)
        x = hidden.float()
        if self.matrix is not None:
            if self.matrix.device != hidden.device:
                self.matrix = self.matrix.to(hidden.device)  # moved once, then reused
            x = x @ self.matrix
        norm = x.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        return (x * (self.target_norm / norm)).to(hidden.dtype)

    def _soft(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.head.weight
        logits = self.head(hidden.to(device=weight.device, dtype=weight.dtype)).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        vocab = self.embeddings.shape[0]  # some heads pad the vocabulary
        probs = torch.softmax(logits[..., :vocab], dim=-1).to(self.embeddings.device)
        return (probs.to(self.embeddings.dtype) @ self.embeddings).to(
            device=hidden.device, dtype=hidden.dtype
        )


@torch.no_grad()
def input_embedding_matrix(model: PreTrainedModel, chunk: int = 16384) -> torch.Tensor:
    """Every token's input embedding as the decoder sees it, [vocab, hidden] in float32.

    Calls the embedding module rather than reading its weight, so models that scale
    embeddings inside that module (Gemma) are matched in the space they really use.
    """
    embed = model.get_input_embeddings()
    vocab = embed.weight.shape[0]
    device = embed.weight.device
    rows = [
        embed(torch.arange(i, min(i + chunk, vocab), device=device)).float() for i in range(0, vocab, chunk)
    ]
    return torch.cat(rows)


def output_embedding_matrix(model: PreTrainedModel) -> torch.Tensor:
    head = model.get_output_embeddings()
    if head is None:
        raise LatentMASError(f"{type(model).__name__} has no LM head; it is not a causal LM")
    return head.weight.detach().float()


def ridge_matrix(w_out: torch.Tensor, w_in: torch.Tensor, lam: float) -> torch.Tensor:
    """Solve min_W ||W_out W - W_in||^2 + lam' ||W||^2, with lam scaled to the Gram matrix.

    `lam` is relative (lam' = lam * trace(G) / hidden) so one default suits models
    whose embedding scales differ by orders of magnitude.
    """
    vocab = min(w_out.shape[0], w_in.shape[0])  # some heads pad the vocabulary
    w_out, w_in = w_out[:vocab].double(), w_in[:vocab].double()
    gram = w_out.T @ w_out
    hidden = gram.shape[0]
    reg = lam * gram.diagonal().mean()
    gram += reg * torch.eye(hidden, dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram, w_out.T @ w_in).float()


def fingerprint(w_out: torch.Tensor, w_in: torch.Tensor, lam: float) -> str:
    """A cheap content key: shapes, lam, and an evenly spaced sample of rows of both matrices."""
    digest = hashlib.sha256(f"{tuple(w_out.shape)}|{tuple(w_in.shape)}|{lam}".encode())
    for w in (w_out, w_in):
        step = max(1, w.shape[0] // 2048)
        digest.update(w[::step].contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:24]


def build_realigner(
    model: PreTrainedModel, mode: str = "ridge", lam: float = 1e-5, use_disk_cache: bool = True
) -> Realigner:
    """Fit (or load from the disk cache) the realignment for `model`."""
    if mode not in REALIGN_MODES:
        raise LatentMASError(f"unknown realignment {mode!r}; choose one of {', '.join(REALIGN_MODES)}")
    if lam < 0:
        raise LatentMASError("the ridge lambda must be >= 0")
    if mode == "none":
        return Realigner(mode=mode, target_norm=0.0)
    # no_grad rather than inference_mode: the matrix is later used in both contexts.
    with torch.no_grad():
        w_in = input_embedding_matrix(model)
        target_norm = w_in.norm(dim=-1).mean().item()
        if mode == "soft":
            head = model.get_output_embeddings()
            if head is None:
                raise LatentMASError(f"{type(model).__name__} has no LM head; it is not a causal LM")
            softcap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
            embeddings = w_in.to(
                model.get_input_embeddings().weight.dtype
            )  # model dtype: half the memory in bf16
            return Realigner(mode, target_norm, head=head, embeddings=embeddings, softcap=softcap)
        if mode != "ridge":
            return Realigner(mode=mode, target_norm=target_norm)
        w_out = output_embedding_matrix(model)
        path = cache_dir() / "realign" / f"{fingerprint(w_out, w_in, lam)}.pt"
        matrix = None
        if use_disk_cache and path.is_file():
            try:
                matrix = torch.load(path, map_location=w_in.device, weights_only=True)
            except Exception:  # a corrupt cache entry is recomputed, never fatal
                log.warning("ignoring unreadable realignment cache %s", path)
        if matrix is None:
            matrix = ridge_matrix(w_out, w_in, lam)
            if use_disk_cache:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                torch.save(matrix.cpu(), tmp)
                tmp.replace(path)
    return Realigner(mode=mode, target_norm=target_norm, matrix=matrix.float())


_FITTED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def realigner_for(model: PreTrainedModel, mode: str = "ridge") -> Realigner:
    """The realigner of `model` for `mode`, fitted (or read from disk) once per process.

    Methods and engines are built often (the server builds one per request spec); the
    ridge solve and even reading its cached matrix cost more than answering a short
    question on a small model, so the result is kept for as long as the model lives.
    """
    fitted = _FITTED.setdefault(model, {})
    if mode not in fitted:
        fitted[mode] = build_realigner(model, mode)
    return fitted[mode]
