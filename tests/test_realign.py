"""Realignment: ridge recovers the output->input embedding map, norms match, disk cache works."""

from __future__ import annotations

import pytest
import torch

from latentmas.engines import realign
from latentmas.engines.realign import build_realigner, input_embedding_matrix, output_embedding_matrix
from latentmas.errors import LatentMASError
from latentmas.tiny import tiny_loaded, tiny_model


def _row_cosines(model, realigner):
    w_out, w_in = output_embedding_matrix(model), input_embedding_matrix(model)
    real = w_in.norm(dim=-1) > 0  # the padding row is all zeros
    mapped = realigner(w_out[real])
    return torch.nn.functional.cosine_similarity(mapped, w_in[real], dim=-1)


def test_ridge_on_tied_embeddings_is_nearly_the_identity():
    model = tiny_model("llama", tie_word_embeddings=True)
    realigner = build_realigner(model, "ridge", use_disk_cache=False)
    assert realigner.matrix is not None  # a real map, not the norm-only rescale
    eye = torch.eye(model.config.hidden_size)
    torch.testing.assert_close(realigner.matrix, eye, atol=1e-3, rtol=0)
    assert _row_cosines(model, realigner).min() > 0.999


@pytest.mark.parametrize("tied", [True, False])
def test_ridge_matches_an_independent_least_squares_solve(tied):
    """min ||W_out M - W_in||^2 + lam' ||M||^2 solved as an augmented least-squares problem;
    a transposed, unregularised or norm-only map would not match."""
    model = tiny_model("qwen2", tie_word_embeddings=tied, seed=5)
    lam = 1e-2  # large enough that the regulariser matters
    realigner = build_realigner(model, "ridge", lam=lam, use_disk_cache=False)
    w_out, w_in = output_embedding_matrix(model).double(), input_embedding_matrix(model).double()
    hidden = w_out.shape[1]
    scale = lam * (w_out.T @ w_out).diagonal().mean()
    a = torch.cat([w_out, scale.sqrt() * torch.eye(hidden, dtype=torch.float64)])
    b = torch.cat([w_in, torch.zeros(hidden, hidden, dtype=torch.float64)])
    expected = torch.linalg.lstsq(a, b).solution.float()
    torch.testing.assert_close(realigner.matrix, expected, atol=1e-4, rtol=1e-3)
    if not tied:
        assert not torch.allclose(expected, expected.T, atol=1e-3)  # so a transpose would fail


def test_ridge_on_untied_embeddings_recovers_a_linear_relation():
    model = tiny_model("qwen2", tie_word_embeddings=False)
    torch.manual_seed(1)
    hidden = model.config.hidden_size
    mixing = torch.randn(hidden, hidden) / hidden**0.5
    with torch.no_grad():
        w_in = model.get_output_embeddings().weight @ mixing
        model.get_input_embeddings().weight.copy_(w_in + 1e-3 * torch.randn_like(w_in))
    cosines = _row_cosines(model, build_realigner(model, "ridge", use_disk_cache=False))
    assert cosines.mean() > 0.99
    # Without the map (norm only) the rows are unrelated: the test would catch a no-op ridge.
    assert _row_cosines(model, build_realigner(model, "norm")).mean() < 0.5


@pytest.mark.parametrize("mode", ["ridge", "norm"])
def test_realigned_vectors_have_the_mean_input_embedding_norm(mode):
    model = tiny_model("gemma")  # Gemma scales embeddings inside the embedding module
    realigner = build_realigner(model, mode, use_disk_cache=False)
    target = input_embedding_matrix(model).norm(dim=-1).mean()
    hidden = torch.randn(5, model.config.hidden_size) * 37.0
    norms = realigner(hidden).norm(dim=-1)
    torch.testing.assert_close(norms, target.expand(5), rtol=1e-4, atol=1e-4)


def test_norm_mode_keeps_direction_and_none_is_identity():
    model = tiny_model("llama")
    hidden = torch.randn(3, model.config.hidden_size)
    scaled = build_realigner(model, "norm")(hidden)
    cos = torch.nn.functional.cosine_similarity(scaled, hidden, dim=-1)
    torch.testing.assert_close(cos, torch.ones(3))
    assert torch.equal(build_realigner(model, "none")(hidden), hidden)


def test_ridge_matrix_is_computed_once_and_read_from_disk(monkeypatch):
    model = tiny_model("qwen3", tie_word_embeddings=False, seed=3)
    first = build_realigner(model, "ridge")

    def must_not_run(*args, **kwargs):
        raise AssertionError("ridge recomputed although it is cached on disk")

    monkeypatch.setattr(realign, "ridge_matrix", must_not_run)
    second = build_realigner(model, "ridge")
    assert torch.equal(first.matrix, second.matrix)


def test_the_disk_cache_is_keyed_by_weights_and_lambda_and_survives_a_corrupt_entry(caplog):
    """Each (weights, lambda) gets its own file; an unreadable file is recomputed, not fatal."""
    from latentmas.paths import cache_dir

    folder = cache_dir() / "realign"
    before = set(folder.glob("*.pt")) if folder.exists() else set()
    a, b = (tiny_model("qwen3", tie_word_embeddings=False, seed=s) for s in (11, 12))
    fitted = build_realigner(a, "ridge")
    build_realigner(a, "ridge")  # the same weights: no new file
    build_realigner(b, "ridge")
    build_realigner(a, "ridge", lam=1e-2)
    files = set(folder.glob("*.pt")) - before
    assert len(files) == 3
    assert not list(folder.glob("*.tmp"))  # written whole, then renamed
    for path in files:
        path.write_bytes(b"not a tensor")
    with caplog.at_level("WARNING"):
        again = build_realigner(a, "ridge")
    assert "ignoring unreadable realignment cache" in caplog.text
    assert torch.equal(again.matrix, fitted.matrix)
    assert torch.equal(
        torch.load(max(files, key=lambda f: f.stat().st_mtime), weights_only=True), fitted.matrix
    )


def test_unknown_mode_is_a_user_error():
    with pytest.raises(LatentMASError, match="unknown realignment"):
        build_realigner(tiny_model("llama"), "bogus")


def test_soft_realignment_is_the_expected_input_embedding():
    """e = softmax(h W_out^T) W_in: checked against the formula, and a confident state
    (one logit far above the rest) becomes that token's own input embedding."""
    model = tiny_model("qwen2", tie_word_embeddings=False, seed=7)
    realigner = build_realigner(model, "soft")
    w_out, w_in = output_embedding_matrix(model), input_embedding_matrix(model)
    hidden = torch.randn(3, model.config.hidden_size)
    expected = torch.softmax(hidden @ w_out.T, dim=-1) @ w_in
    torch.testing.assert_close(realigner(hidden), expected, atol=1e-5, rtol=1e-4)
    token = 17
    confident = 50 * w_out[token] / w_out[token].norm() ** 2 * w_out.norm(dim=-1).max()
    torch.testing.assert_close(realigner(confident[None])[0], w_in[token], atol=1e-3, rtol=1e-3)


def test_a_model_is_realigned_once_per_process(monkeypatch):
    """The server builds a method per request spec; none of them refits the realignment."""
    from latentmas import LatentMAS, Sampling

    model = tiny_model("qwen2", seed=11)
    fits = []
    real = realign.build_realigner
    monkeypatch.setattr(realign, "build_realigner", lambda *a, **k: fits.append(a[1]) or real(*a, **k))
    first = realign.realigner_for(model, "ridge")
    assert realign.realigner_for(model, "ridge") is first
    assert realign.realigner_for(model, "norm") is not first
    assert fits == ["ridge", "norm"]
    lm = tiny_loaded("qwen2")
    methods = [LatentMAS(lm, Sampling(max_new_tokens=t)) for t in (4, 8)]
    assert methods[0].engine.realigner("ridge") is methods[1].engine.realigner("ridge")


def test_soft_realignment_and_the_logit_lens_apply_the_models_softcap():
    """Gemma-style final-logit soft-capping: tanh(z / c) * c before the softmax."""
    from latentmas.engines.forward import lm_logits

    model = tiny_model("gemma3", final_logit_softcapping=2.0, seed=5)
    realigner = build_realigner(model, "soft")
    w_out, w_in = output_embedding_matrix(model), input_embedding_matrix(model)
    hidden = 5 * torch.randn(3, model.config.hidden_size)
    logits = hidden @ w_out.T
    capped = torch.tanh(logits / 2.0) * 2.0
    torch.testing.assert_close(lm_logits(model, hidden), capped, atol=1e-5, rtol=1e-4)
    expected = torch.softmax(capped, dim=-1) @ w_in
    torch.testing.assert_close(realigner(hidden), expected, atol=1e-5, rtol=1e-4)
    uncapped = torch.softmax(logits, dim=-1) @ w_in
    assert not torch.allclose(realigner(hidden), uncapped, atol=1e-3)


def test_a_head_that_pads_the_vocabulary_is_cut_to_the_embeddings():
    """Some LM heads have more rows than the input embedding; the extra logits are ignored."""
    model = tiny_model("qwen2", tie_word_embeddings=False, seed=9)
    vocab, width = model.get_input_embeddings().weight.shape
    padded = torch.nn.Linear(width, vocab + 8, bias=False)
    with torch.no_grad():
        padded.weight[:vocab] = model.get_output_embeddings().weight
        padded.weight[vocab:] = 100.0  # would dominate every softmax if it were kept
    model.set_output_embeddings(padded)
    w_out, w_in = output_embedding_matrix(model), input_embedding_matrix(model)
    hidden = torch.randn(2, width)
    expected = torch.softmax(hidden @ w_out[:vocab].T, dim=-1) @ w_in
    torch.testing.assert_close(build_realigner(model, "soft")(hidden), expected, atol=1e-5, rtol=1e-4)
    ridge = build_realigner(model, "ridge", use_disk_cache=False)
    reference = realign.ridge_matrix(w_out[:vocab], w_in, 1e-5)
    torch.testing.assert_close(ridge.matrix, reference.float(), atol=1e-4, rtol=1e-3)
