"""Attention for a long shared memory: transformers' SDPA without copying keys and values per query head.

Models with grouped-query attention (Qwen2.5-0.5B: 14 query heads share 2 key/value heads) keep
one key/value head per group in the cache. For a padded or masked prompt of several tokens,
transformers' SDPA path expands every key/value head once per query head before attending
(`repeat_kv`): on CPU it applies the "no mask" rule of CUDA's fused kernels, though PyTorch's
CPU kernel takes a mask with `enable_gqa` at no cost. That copy is as long as the shared memory,
is made in every layer for every agent's prompt, and was what made a large team's prefill grow
faster than its memory (benchmarks/team_size.py). Here the CPU case attends to the grouped heads
as they are; the output is the same to the bit, and every other case is transformers' own.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

# A name with "sdpa" in it: transformers then checks and falls back as it does for its own SDPA.
GROUPED_SDPA = "sdpa_grouped"


def grouped_sdpa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention on the key/value heads as cached, for masked multi-token queries on CPU."""
    groups = getattr(module, "num_key_value_groups", 1)
    if (
        query.device.type != "cpu"
        or groups == 1
        or query.shape[2] == 1  # transformers packs a single query's heads without copying
        or attention_mask is None  # transformers already uses enable_gqa then
        or kwargs.get("position_bias") is not None
        or kwargs.get("softcap") is not None
        or kwargs.get("output_attentions", False)
    ):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs
        )
    output = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, enable_gqa=True
    )
    return output.transpose(1, 2).contiguous(), None


AttentionInterface.register(GROUPED_SDPA, grouped_sdpa_forward)
AttentionMaskInterface.register(GROUPED_SDPA, sdpa_mask)
