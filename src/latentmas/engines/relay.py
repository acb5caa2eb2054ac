"""What a later agent is handed of the earlier agents' memory, chosen at each handoff.

Two published training-free relays, both decided per question when an agent starts reading:

- **Layer-selective relay** (KVComm, ICLR 2026, arXiv 2510.03346): earlier agents' columns
  stay visible in only a share of the layers. A layer's importance is the attention mass
  the reading agent's prompt puts on earlier agents' columns there (the first column, the
  attention sink, left out), measured by reading the prompt once with full sight; the
  ranking mixes that importance with a Gaussian prior on the middle layers (both scaled to
  [0, 1], equal weights, sigma = 10 layers as in KVComm's code).
- **Relay filter** (kNN-LatentMAS): only the share of earlier agents' columns whose
  middle-layer keys (averaged over heads) are closest in cosine to the reading agent's
  prompt (its mean input embedding, folded into head-sized chunks and averaged) is kept,
  plus the newest few columns; the rest are forgotten for good, as if they were padding.

The probe that measures importance reads the prompt with the model's eager attention (the
stock implementation that returns its weights) and is then taken back out of the memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import PreTrainedModel

from .cache import SharedMemory
from .forward import append, decoder, left_pad
from .views import attention_modules

PRIOR_WEIGHT = 0.5  # importance and the middle-layer prior count equally
PRIOR_SIGMA = 10.0  # layers; KVComm's default
NEWEST_KEPT = 5  # the relay filter always keeps this many newest columns (kNN-LatentMAS's min_keep)


def scaled(values: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Min-max scale along `dim` to [0, 1] (all zeros where the values are all equal)."""
    low = values.amin(dim=dim, keepdim=True)
    span = values.amax(dim=dim, keepdim=True) - low
    return torch.where(span > 1e-9, (values - low) / span.clamp_min(1e-9), torch.zeros_like(values))


def chosen_layers(importance: torch.Tensor, share: float) -> torch.Tensor:
    """importance [layers, batch] -> [layers, batch] True for the layers each row keeps:
    the top round(share x layers) (at least one) by importance mixed with the middle prior."""
    layers = importance.shape[0]
    depth = torch.arange(layers, dtype=torch.float32, device=importance.device)
    prior = torch.exp(-0.5 * ((depth - (layers - 1) / 2) / PRIOR_SIGMA) ** 2)
    score = (1 - PRIOR_WEIGHT) * scaled(importance.float()) + PRIOR_WEIGHT * scaled(prior)[:, None]
    count = max(1, round(share * layers))
    top = score.topk(count, dim=0).indices
    return torch.zeros_like(score, dtype=torch.bool).scatter_(0, top, True)


def kept_columns(
    similarity: torch.Tensor, candidates: torch.Tensor, real: torch.Tensor, share: float
) -> torch.Tensor:
    """similarity, candidates, real: [batch, length] -> [batch, length] True for the candidate
    columns each row keeps: the top ceil(share x candidates) by similarity, and the newest
    `NEWEST_KEPT` real columns whatever their score. Columns that are not candidates are kept."""
    keep = ~candidates
    for row in range(similarity.shape[0]):
        where = candidates[row].nonzero().squeeze(-1)
        if where.numel() == 0:
            continue
        count = min(where.numel(), math.ceil(share * where.numel() - 1e-9))  # 0.9 x 10 is 9, not 10
        best = where[similarity[row, where].float().topk(count).indices]
        newest = real[row].nonzero().squeeze(-1)[-NEWEST_KEPT:]
        keep[row, best] = True
        keep[row, newest] = True
    return keep


def key_similarity(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """query [batch, hidden] (a prompt's mean input embedding), keys [batch, kv_heads, length,
    head_dim] (one layer's) -> cosine similarity [batch, length], as kNN-LatentMAS measures it."""
    head_dim = keys.shape[-1]
    folded = query.float().reshape(query.shape[0], -1, head_dim).mean(dim=1)  # [batch, head_dim]
    keys = keys.float().mean(dim=1)  # [batch, length, head_dim]
    return torch.nn.functional.cosine_similarity(keys, folded[:, None, :], dim=-1)


@contextmanager
def attention_mass_probe(
    model: PreTrainedModel, columns: torch.Tensor, queries: torch.Tensor, attention: str
) -> Iterator[list[torch.Tensor]]:
    """While open, forwards run the model's eager attention (then `attention` again, the
    implementation the model was loaded with); each layer's attention mass on `columns`
    [batch, length] (True: counted), averaged over heads and the real queries `queries`
    [batch, width], is appended to the yielded list as [batch]."""
    modules = attention_modules(decoder(model))
    masses: list[torch.Tensor] = []

    def record(module, args, output) -> None:
        weights = output[1]  # [batch, heads, width, length]; the newest columns are never counted
        counted = torch.nn.functional.pad(columns, (0, weights.shape[-1] - columns.shape[-1]))
        on_columns = (weights.float() * counted[:, None, None, :].to(weights.device)).sum(-1)
        per_query = on_columns.mean(dim=1)  # [batch, width]
        real = queries.to(per_query.device).float()
        masses.append(((per_query * real).sum(-1) / real.sum(-1).clamp_min(1)).to(columns.device))

    hooks = [m.register_forward_hook(record) for m in modules]
    try:
        model.set_attn_implementation("eager")
        yield masses
    finally:
        for hook in hooks:
            hook.remove()
        model.set_attn_implementation(attention)


def hand_over(
    model: PreTrainedModel, memory: SharedMemory, prompts: list[list[int]], pad_id: int, attention: str
) -> None:
    """Before an agent reads `prompts`, choose what it is handed of the earlier agents' columns
    (the view's relay filter and layer-selective relay). Per row, so a row's choice does not
    depend on its batch. `attention`: the model's own attention implementation (the probe
    switches to eager and back)."""
    view = memory.view
    if view is None or view.relay_keep == view.relay_layers == 1.0 or memory.agent == 0 or not memory.length:
        return  # no relay, or nothing earlier to hand over
    ids, mask = left_pad(prompts, pad_id, memory.device)
    real = memory.attention_mask.bool()
    earlier = real & (memory.owner < memory.agent)[None]
    if (visible := memory.visible()) is not None:
        earlier &= visible[None]
    if view.relay_keep < 1.0:
        embeds = model.get_input_embeddings()(ids).float()
        query = (embeds * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        middle = memory.cache.layers[len(memory.cache.layers) // 2].keys.to(memory.device)
        keep = kept_columns(key_similarity(query, middle), earlier, real, view.relay_keep)
        memory.forget_columns(keep)
        earlier &= keep
    if view.relay_layers < 1.0:
        counted = earlier.clone()
        rows = torch.arange(memory.batch_size, device=memory.device)
        counted[rows, memory.attention_mask.argmax(dim=1)] = False  # the attention sink
        length, next_position, hidden = memory.length, memory.next_position.clone(), memory.hidden
        with attention_mass_probe(model, counted, mask, attention) as masses:
            append(model, memory, mask, input_ids=ids)
        memory.forget_after(length, next_position)
        memory.hidden = hidden
        memory.relayed = chosen_layers(torch.stack(masses), view.relay_layers)
