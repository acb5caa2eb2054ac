"""The grouped SDPA attention gives transformers' SDPA outputs without copying key/value heads."""

import pytest
import torch
import transformers.integrations.sdpa_attention as hf_sdpa
from transformers import DynamicCache

from latentmas.attention import GROUPED_SDPA
from latentmas.models import ATTENTION
from latentmas.tiny import TINY_CONFIGS, tiny_model


def _padded_prefill_then_prompt(model, seed=0):
    """A left-padded batch prefilled into a cache, then a multi-token masked prompt on top."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 400, (2, 24), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, :7] = 0  # left padding: the mask is not purely causal, so SDPA gets an explicit mask
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        first = model(input_ids=ids, attention_mask=mask, cache=cache).logits
        more = torch.randint(3, 400, (2, 9), generator=generator)
        mask = torch.cat([mask, torch.ones_like(more)], dim=1)
        second = model(input_ids=more, attention_mask=mask, cache=cache).logits
    return first, second


def test_models_load_with_grouped_attention():
    assert ATTENTION == GROUPED_SDPA
    assert tiny_model("qwen2").config._attn_implementation == GROUPED_SDPA


@pytest.mark.parametrize("arch", sorted(TINY_CONFIGS))
def test_same_logits_as_transformers_sdpa(arch):
    model = tiny_model(arch)
    grouped = _padded_prefill_then_prompt(model)
    model.set_attn_implementation("sdpa")
    reference = _padded_prefill_then_prompt(model)
    for ours, theirs in zip(grouped, reference):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_masked_prompt_attends_without_repeating_key_value_heads(monkeypatch):
    """The point of it: transformers' path copies keys and values per query head; ours never does."""
    model = tiny_model("qwen2")  # 4 query heads over 2 key/value heads
    calls = []
    original = hf_sdpa.repeat_kv
    monkeypatch.setattr(hf_sdpa, "repeat_kv", lambda x, n: calls.append(n) or original(x, n))
    _padded_prefill_then_prompt(model)
    assert calls == []
    model.set_attn_implementation("sdpa")
    _padded_prefill_then_prompt(model)
    assert calls  # the probe sees transformers' copies, so the assertion above can fail
