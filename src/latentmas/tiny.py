"""Random-weight models and a small tokenizer, built offline in seconds.

Tests use them to exercise every architecture the engine claims to support without
downloading weights; speed benchmarks use them at real shapes (e.g. Qwen3-4B's). It stays
in the installed package, not under tests/, because the benchmark scripts (`efficiency.py`
on `--config-file`) and users' own tests of a handoff they write import it too.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from .models import ATTENTION, LoadedModel

CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = [
    "You are a careful planner. Break the problem into steps. Question: how many apples?",
    "Janet has 16 eggs, eats 3 and bakes 4; she sells the rest for $2 each. 0123456789",
    "The critic checks the plan. The refiner improves it. The solver answers in \\boxed{18}.",
    "Let's think step by step. First, second, third. The answer is #### 42 + - * / = ( )",
]


def tiny_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with a ChatML chat template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|pad|>",
        eos_token="<|im_end|>",
        chat_template=CHATML_TEMPLATE,
    )


# Small shapes per architecture; every field is a standard transformers config field.
TINY_CONFIGS: dict[str, dict] = {
    "llama": dict(model_type="llama", tie_word_embeddings=True),
    "qwen2": dict(model_type="qwen2", tie_word_embeddings=False),
    "qwen3": dict(model_type="qwen3", tie_word_embeddings=True, head_dim=16),
    "gemma": dict(model_type="gemma", tie_word_embeddings=True, head_dim=16),
    # Sliding-window attention with a window shorter than the test prompts; layers alternate.
    "gemma3": dict(
        model_type="gemma3_text",
        tie_word_embeddings=True,
        head_dim=16,
        sliding_window=16,
        layer_types=["sliding_attention", "full_attention"],
        initializer_range=0.03,  # larger ones collapse this architecture onto one token
    ),
    "mistral": dict(model_type="mistral", tie_word_embeddings=False, sliding_window=16),
}


def tiny_model(arch: str = "llama", vocab_size: int = 512, seed: int = 0, **overrides) -> PreTrainedModel:
    """A 2-layer random model of the given architecture (float32, eval mode)."""
    fields = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=0,
        initializer_range=0.25,  # larger than default so outputs depend on the input
    )
    fields.update(TINY_CONFIGS[arch])
    fields.update(overrides)
    model_type = fields.pop("model_type")
    config = AutoConfig.for_model(model_type, **fields)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=ATTENTION)
    return model.eval()


def tiny_loaded(arch: str = "llama", seed: int = 0, **overrides) -> LoadedModel:
    tokenizer = tiny_tokenizer()
    model = tiny_model(arch, vocab_size=len(tokenizer) + 16, seed=seed, **overrides)
    return LoadedModel(model=model, tokenizer=tokenizer, name=f"tiny-{arch}")


def model_from_config_file(path: str | Path, dtype: torch.dtype, device: str, **overrides) -> PreTrainedModel:
    """A random-weight model of a published shape (e.g. shared/data/configs/qwen3-4b.json)."""
    fields = json.loads(Path(path).read_text())
    fields.update(overrides)
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=ATTENTION)
    return model.eval()
