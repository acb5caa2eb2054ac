"""The vLLM backend's pure parts on CPU; the real decoder only where vLLM and a GPU exist."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from latentmas import LatentMAS, Sampling, engine
from latentmas.engine import SharedMemory
from latentmas.errors import LatentMASError
from latentmas.roles import shared_conversation
from latentmas.vllm_backend import (
    EmbeddingLog,
    FinalAgentInVLLM,
    Segment,
    VLLMDecoder,
    assemble_prompt_embeds,
)


class EchoDecoder:
    """Stands in for vLLM: decodes the assembled embeddings with the transformers model itself."""

    def __init__(self, lm, sampling):
        self.lm, self.sampling, self.seen = lm, sampling, []

    def generate(self, prompt_embeds, sampling):
        self.seen.extend(prompt_embeds)
        results = []
        for embeds in prompt_embeds:
            memory = SharedMemory.empty(self.lm.model, 1)
            ones = torch.ones(1, embeds.shape[0], dtype=torch.long)
            hidden = engine.append(self.lm.model, memory, ones, inputs_embeds=embeds[None])
            method = LatentMAS(self.lm, sampling)
            tokens = engine.decode(self.lm.model, memory, hidden, sampling, method.engine.stop_ids)[0]
            results.append((self.lm.tokenizer.decode(tokens, skip_special_tokens=True).strip(), len(tokens)))
        return results


def test_assembly_order_and_shapes():
    a, b, c, d = (torch.full((n, 4), float(i)) for i, n in enumerate([3, 2, 5, 4]))
    segments = [Segment("prompt", a), Segment("latent", b), Segment("prompt", c), Segment("prompt", d)]
    full = assemble_prompt_embeds(segments)
    assert full.shape == (14, 4) and full[:, 0].tolist() == [0] * 3 + [1] * 2 + [2] * 5 + [3] * 4
    with pytest.raises(LatentMASError):
        assemble_prompt_embeds([Segment("latent", b)])


def test_assembled_embeddings_reproduce_the_shared_cache(tiny):
    """Decoding from the assembled sequence gives the same answer as the shared-cache path,
    i.e. the order and content match what the transformers path attends to."""
    sampling = Sampling(max_new_tokens=10)
    questions = ["What is 2+2?", "A much longer question about eggs and ducks and markets"]
    reference = LatentMAS(tiny, sampling, latent_steps=3).solve(questions)
    echo = EchoDecoder(tiny, sampling)
    via_embeds = LatentMAS(tiny, sampling, latent_steps=3, decoder=FinalAgentInVLLM(echo, tiny)).solve(
        questions
    )
    assert [a.final_text for a in via_embeds] == [a.final_text for a in reference]
    segments = shared_conversation(tiny.tokenizer, LatentMAS(tiny).roles, questions[0], "")
    assert echo.seen[0].shape == (sum(map(len, segments)) + 9, tiny.model.config.hidden_size)
    with pytest.raises(LatentMASError, match="memory full"):
        LatentMAS(tiny, sampling, memory="latent_only", decoder=FinalAgentInVLLM(echo, tiny))


def test_embedding_log_skips_stopped_rows():
    log = EmbeddingLog(2)
    log.add_prompts([torch.zeros(2, 3), torch.zeros(4, 3)])
    log.on_step(0, None, torch.ones(2, 3), torch.tensor([True, True]))
    log.on_step(1, None, torch.ones(2, 3) * 2, torch.tensor([True, False]))
    log.add_prompts([torch.zeros(1, 3), torch.zeros(1, 3)])
    assert [s.embeds.shape[0] for s in log.rows[0]] == [2, 2, 1]
    assert [s.embeds.shape[0] for s in log.rows[1]] == [4, 1, 1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_choosing_vllm_without_a_gpu_is_a_clear_error():
    with pytest.raises(LatentMASError, match="needs a CUDA GPU"):
        VLLMDecoder("Qwen/Qwen3-0.6B")


HAS_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.mark.skipif(
    not (HAS_VLLM and torch.cuda.is_available()),
    reason="integration test: needs the vllm package and a CUDA GPU (neither is on the CI machine)",
)
def test_vllm_decoder_matches_transformers_greedy():
    from latentmas import load_model

    lm = load_model("Qwen/Qwen3-0.6B", device="cuda")
    sampling = Sampling(max_new_tokens=32)
    reference = LatentMAS(lm, sampling, latent_steps=4).solve(["What is 17 * 3?"])
    decoder = VLLMDecoder("Qwen/Qwen3-0.6B")
    answer = LatentMAS(lm, sampling, latent_steps=4, decoder=FinalAgentInVLLM(decoder, lm)).solve(
        ["What is 17 * 3?"]
    )
    assert answer[0].final_text[:20] == reference[0].final_text[:20]
