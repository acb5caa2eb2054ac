"""The embedded SmolLM2-135M-Instruct: loads offline, answers, and stays batch-invariant."""

from __future__ import annotations

from latentmas import LatentMAS, Sampling, get_task
from latentmas.models import EMBEDDED_MODEL


def test_embedded_model_loads_with_a_chat_template(embedded):
    assert embedded.name == EMBEDDED_MODEL
    assert embedded.tokenizer.chat_template
    assert embedded.model.config.tie_word_embeddings


def test_embedded_latent_mas_batch_of_8_matches_batch_of_1(embedded):
    task = get_task("gsm8k")
    questions = [e.question for e in task.load()[:8]]
    method = LatentMAS(embedded, Sampling(max_new_tokens=20), latent_steps=4)
    batched = method.solve(questions, task.answer_format)
    alone = [method.solve([q], task.answer_format)[0] for q in questions]
    assert [a.final_text for a in batched] == [a.final_text for a in alone]
    assert all(a.output_tokens > 0 for a in alone)
