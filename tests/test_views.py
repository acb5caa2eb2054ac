"""Memory views (what later agents see of the thoughts) and the entropy guard."""

from __future__ import annotations

import math

import pytest
import torch

from latentmas import LatentMAS, Sampling
from latentmas.engines import LatentSteps, TransformersEngine
from latentmas.engines.cache import SharedMemory
from latentmas.engines.forward import lm_logits
from latentmas.engines.relay import NEWEST_KEPT, kept_columns, key_similarity
from latentmas.engines.rollout import EntropyGuard, rollout
from latentmas.engines.views import MemoryView
from latentmas.errors import LatentMASError
from latentmas.handoffs import LatentConfig, ReentryConfig, ViewConfig, build
from latentmas.spec import RunSpec
from latentmas.teams import encode_chat
from latentmas.tiny import tiny_loaded

from .conftest import QUESTIONS

SAMPLING = Sampling(max_new_tokens=12)


def handoff_for(view: MemoryView | None, realign: str = "ridge"):
    """The handoff that shows the memory as `view` does."""
    if view is None:
        return LatentConfig(realign=realign)
    kind = ReentryConfig if view.thoughts_enter else ViewConfig
    options = dict(
        thoughts_from=view.thoughts_from, relay_layers=view.relay_layers, relay_keep=view.relay_keep
    )
    return kind(thought_weight=view.thought_weight, realign=realign, **options)


def answers(lm, questions, view: MemoryView | None = None, realign: str = "ridge", **options):
    method = LatentMAS(lm, SAMPLING, handoff=handoff_for(view, realign), **options)
    return [a.final_text for a in method.solve(questions)]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_the_view_machinery_with_a_negligible_bias_changes_no_answer(arch):
    """The 4-D mask and the per-layer hooks, with a bias of about -1e-12, answer exactly as the
    plain path does, at batch 1 and 8 (so any change a view makes is the view's own)."""
    lm = tiny_loaded(arch)
    plain = answers(lm, QUESTIONS, latent_steps=3)
    view = MemoryView(thought_weight=1 - 1e-12)
    assert answers(lm, QUESTIONS, latent_steps=3, view=view) == plain
    assert [answers(lm, [q], latent_steps=3, view=view)[0] for q in QUESTIONS] == plain


def test_the_identity_view_installs_nothing(tiny):
    memory = TransformersEngine(tiny).new_memory(2, MemoryView())
    assert memory.view is None


def test_a_vanishing_thought_weight_is_the_team_without_thoughts(tiny, monkeypatch):
    """beta -> 0 hides every earlier thought from later agents: the answers equal m = 0's once
    m = 0 leaves the same gaps in the position ids (RoPE sees the thoughts' positions)."""
    steps = 4
    hidden = answers(tiny, QUESTIONS, latent_steps=steps, view=MemoryView(thought_weight=1e-30))
    begin = SharedMemory.begin_agent

    def leave_a_gap(memory, reads=None):
        if memory.agent >= 0:
            memory.next_position = memory.next_position + steps
        begin(memory, reads)

    monkeypatch.setattr(SharedMemory, "begin_agent", leave_a_gap)
    assert answers(tiny, QUESTIONS, latent_steps=0) == hidden
    monkeypatch.undo()
    assert answers(tiny, QUESTIONS, latent_steps=steps) != hidden  # the thoughts do matter


def after_first_agent(lm, view: MemoryView | None, plan: str = "plan 12", steps: int = 3):
    """An engine and a memory holding the first agent's prompt and `steps` thoughts;
    -> (engine, memory, the second agent's prompt)."""
    engine = TransformersEngine(lm, share_prefixes=False)
    first, second = (
        encode_chat(lm.tokenizer, [{"role": "user", "content": t}], False) for t in (plan, "check")
    )
    memory = engine.new_memory(1, view)
    engine.prefill(memory, [first])
    build(handoff_for(view)).think(engine, memory, LatentSteps(steps), None)
    return engine, memory, second


def weights_reading(lm, engine, memory, prompt: list[int]) -> list[torch.Tensor]:
    """Each layer's attention weights [heads, query, key] while the next agent reads `prompt`
    (a layer-selective relay's probe reads it first: only the last read counts)."""
    seen: list[torch.Tensor] = []
    hooks = [
        layer.self_attn.register_forward_hook(lambda m, i, out: seen.append(out[1][0].detach().clone()))
        for layer in lm.model.model.layers
    ]
    try:
        engine.prefill(memory, [prompt])
    finally:
        for hook in hooks:
            hook.remove()
    return seen[-len(hooks) :]


def layer_weights(lm, view: MemoryView | None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The second agent's attention weights per layer, after the first agent's prompt and three
    thoughts; -> (weights, which columns are thoughts)."""
    engine, memory, second = after_first_agent(lm, view)
    return weights_reading(lm, engine, memory, second), memory.is_latent.clone()


@pytest.fixture(scope="module")
def eager():
    lm = tiny_loaded("llama")
    lm.model.set_attn_implementation("eager")  # returns its attention weights
    lm.attention = "eager"  # what a relay's probe switches back to
    return lm


def test_thoughts_from_hides_thoughts_from_the_lower_layers_only(eager):
    weights, thoughts = layer_weights(eager, MemoryView(thoughts_from=0.5))
    low, high = weights  # two layers: layer 0 is below half the depth
    assert thoughts.sum() == 3
    assert low[..., thoughts].abs().max() == 0
    assert high[..., thoughts].min() > 0


def test_a_thought_weight_scales_attention_to_earlier_thoughts_by_beta(eager):
    """In layer 0 the keys and queries come from the same embeddings either way, so the odds of
    a thought column against a prompt column shrink by exactly beta."""
    beta = 0.25
    full, thoughts = layer_weights(eager, None)
    weighted, _ = layer_weights(eager, MemoryView(thought_weight=beta))
    prompt = 0  # a prompt column of the first agent

    def odds(weights):
        return weights[0][..., thoughts] / weights[0][..., prompt : prompt + 1]

    assert torch.allclose(odds(weighted), beta * odds(full), rtol=1e-4)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(thought_weight=0.0), "thought_weight: Input should be greater than 0"),
        (dict(thoughts_from=1.0), "thoughts_from: Input should be less than 1"),
        (dict(method="single", thought_weight=0.5), "a single agent hands nothing over"),
        (dict(engine="llamacpp", thoughts_from=0.5), "--engine llamacpp cannot run memory views"),
        (dict(max_thought_entropy=-1.0), "max_thought_entropy: Input should be greater than or equal to 0"),
        (dict(relay_keep=0.0), "relay_keep: Input should be greater than 0"),
        (dict(relay_layers=1.5), "relay_layers: Input should be less than or equal to 1"),
        (dict(engine="vllm", relay_layers=0.3), "--engine vllm cannot run memory views"),
        (dict(method="text_mas", relay_keep=0.5), "--relay-keep: not an option of the text handoff"),
    ],
)
def test_bad_view_options_are_clear_errors(options, message):
    with pytest.raises(LatentMASError, match=message):
        RunSpec(**options)


def test_the_entropy_guard_stops_a_row_before_a_noisy_thought(tiny):
    """Rows whose lens entropy is above the limit take no thought; the others take them all,
    and a guard that cannot fire changes nothing."""
    model = tiny.model
    hidden = torch.randn(4, model.config.hidden_size)
    guard = EntropyGuard(lambda h: lm_logits(model, h))
    entropy = guard.entropy(hidden).detach()
    limit = float(entropy.median())
    calls = []

    def step(hidden, active):
        calls.append(active.clone())
        return hidden, hidden  # a fixed point, so entropies stay put

    _, taken = rollout(step, hidden, 3, entropy_guard=EntropyGuard(guard.lens, max_entropy=limit))
    assert taken.tolist() == [3 if e <= limit else 0 for e in entropy.tolist()]
    _, taken = rollout(step, hidden, 3, entropy_guard=EntropyGuard(guard.lens))
    assert taken.tolist() == [3] * 4


@torch.inference_mode()
def test_the_entropy_guard_stops_at_a_jump(tiny):
    model = tiny.model
    lens = lambda h: lm_logits(model, h)  # noqa: E731
    calm, noisy = torch.randn(2, model.config.hidden_size).unbind()
    guard = EntropyGuard(lens)
    rise = float(guard.entropy(noisy[None]) - guard.entropy(calm[None]))
    if rise < 0:
        calm, noisy, rise = noisy, calm, -rise
    states = iter([noisy[None], noisy[None]])
    _, taken = rollout(
        lambda h, a: (h, next(states)), calm[None], 3, entropy_guard=EntropyGuard(lens, max_jump=rise / 2)
    )
    assert taken.tolist() == [1]  # the first thought (calm) goes in; the noisy one does not
    assert math.isfinite(rise)


def test_the_entropy_guard_is_batch_invariant_and_described(tiny):
    handoff = LatentConfig(max_thought_entropy=5.0, max_entropy_jump=0.5)
    method = LatentMAS(tiny, SAMPLING, latent_steps=6, handoff=handoff)
    batched = method.solve(QUESTIONS)
    alone = [method.solve([q])[0] for q in QUESTIONS]
    assert [a.final_text for a in batched] == [a.final_text for a in alone]
    assert [a.latent_steps for a in batched] == [a.latent_steps for a in alone]
    assert method.describe()["handoff"]["max_thought_entropy"] == 5.0


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize(
    "view",
    [
        MemoryView(thought_weight=0.3),
        MemoryView(thoughts_from=0.5),
        MemoryView(thoughts_from=0.5, thoughts_enter=True),
        MemoryView(relay_layers=0.5),
        MemoryView(relay_keep=0.5),
    ],
)
def test_views_are_batch_invariant(arch, view):
    lm = tiny_loaded(arch)
    batched = answers(lm, QUESTIONS, latent_steps=3, view=view, realign="none")
    assert [answers(lm, [q], latent_steps=3, view=view, realign="none")[0] for q in QUESTIONS] == batched


def test_a_thought_that_enters_above_the_embedding_is_the_stream_there(tiny):
    """At the entry layer the thought replaces the stream, rescaled to the norm the stream had
    at the previous position; what the layers below compute for it changes nothing."""
    view = MemoryView(thoughts_from=0.5, thoughts_enter=True)
    expected = answers(tiny, QUESTIONS[:3], latent_steps=3, view=view, realign="none")
    layers = tiny.model.model.layers
    entering: list[torch.Tensor] = []
    zero_input = []

    def watch_entry(layer, args, kwargs):
        stream = args[0] if args else kwargs["hidden_states"]
        entering.append(stream[:, -1].clone())

    def note_thought(layer, args, kwargs):
        stream = args[0] if args else kwargs["hidden_states"]
        zero_input.append(bool((stream[:, -1] == 0).all()))

    def scramble(layer, args, kwargs, out):
        if not zero_input[-1]:
            return None
        hidden = out[0] if isinstance(out, tuple) else out
        hidden = hidden.clone()
        hidden[:, -1] = torch.randn_like(hidden[:, -1]) * 100
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

    hooks = [
        layers[1].register_forward_pre_hook(watch_entry, with_kwargs=True),
        layers[0].register_forward_pre_hook(note_thought, with_kwargs=True),
        layers[0].register_forward_hook(scramble, with_kwargs=True),
    ]
    try:
        assert answers(tiny, QUESTIONS[:3], latent_steps=3, view=view, realign="none") == expected
    finally:
        for hook in hooks:
            hook.remove()
    thoughts = [i for i, zero in enumerate(zero_input) if zero]
    assert len(thoughts) == 3 * 3  # three thoughts for each of the three thinking agents
    for i in thoughts:  # same norm as the stream one position earlier (a prompt or a thought)
        torch.testing.assert_close(
            entering[i].norm(dim=-1), entering[i - 1].norm(dim=-1), rtol=1e-4, atol=1e-4
        )


def test_thoughts_enter_at_the_embedding_layer_is_refused():
    with pytest.raises(LatentMASError, match="thoughts_from: Input should be greater than 0"):
        RunSpec(handoff="reentry:thoughts_from=0")


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("view", [MemoryView(relay_layers=0.99), MemoryView(relay_keep=0.999)])
def test_a_relay_that_keeps_everything_changes_no_answer(arch, view):
    """A share that rounds to every layer (two here) or every column runs the whole relay
    (the probe reads each prompt, then is taken back out of the memory) and must leave the
    answers exactly as without it, at batch 1 and 8."""
    lm = tiny_loaded(arch)
    plain = answers(lm, QUESTIONS, latent_steps=3)
    assert answers(lm, QUESTIONS, latent_steps=3, view=view) == plain
    assert [answers(lm, [q], latent_steps=3, view=view)[0] for q in QUESTIONS] == plain


def test_a_layer_selective_relay_hides_earlier_agents_outside_the_chosen_layer(eager):
    """Two layers, share 0.5: the reader sees the first agent's columns in one layer only, and
    it is the layer whose full-sight attention on them (the sink left out) is larger; the
    middle prior is flat on two layers, so importance alone decides."""
    full, thoughts = layer_weights(eager, None)
    earlier = torch.ones_like(thoughts)  # every column before the second prompt is the first agent's
    width = full[0].shape[-2]
    earlier[-width:] = False
    earlier[0] = False  # the sink
    mass = [w[..., earlier].sum(-1).mean().item() for w in full]
    chosen = mass.index(max(mass))
    relayed, _ = layer_weights(eager, MemoryView(relay_layers=0.5))
    earlier[0] = True
    assert relayed[chosen][..., earlier].min() > 0
    assert relayed[1 - chosen][..., earlier].abs().max() == 0
    assert relayed[1 - chosen][..., ~earlier].sum(-1).allclose(torch.tensor(1.0))  # its own prompt


def test_a_relay_filter_forgets_the_columns_least_like_the_next_prompt(eager):
    """Share 0.5: half the first agent's columns (rounded up), the most similar in the middle
    layer's keys to the next prompt, plus the newest five, get attention in every layer; the
    rest get exactly none, and every kept column is at least as similar as every dropped one."""
    engine, memory, second = after_first_agent(
        eager, MemoryView(relay_keep=0.5), "plan 12 apples and 7 pears"
    )
    earlier = memory.length
    keys = memory.cache.layers[len(memory.cache.layers) // 2].keys
    embeds = eager.model.get_input_embeddings()(torch.tensor([second]))
    similarity = key_similarity(embeds.mean(1), keys)[0]
    seen = weights_reading(eager, engine, memory, second)
    kept = memory.attention_mask[0, :earlier].bool()
    assert math.ceil(earlier / 2) <= kept.sum() <= math.ceil(earlier / 2) + NEWEST_KEPT
    assert kept[-NEWEST_KEPT:].all()
    older = torch.arange(earlier) < earlier - NEWEST_KEPT
    assert similarity[kept & older].min() >= similarity[~kept & older].max()
    for weights in seen:
        assert weights[..., :earlier][..., ~kept].abs().max() == 0
        assert weights[..., :earlier][..., kept].min() > 0


def test_the_relay_filter_keeps_the_share_it_names():
    """0.9 of 10 candidates is 9 (0.9 x 10 is 9.000000000000002 in floating point); the newest
    five real columns stay whatever their score, and columns that are not candidates stay."""
    similarity = torch.arange(20.0)[None].flip(-1)  # the oldest columns are the most similar
    candidates = torch.zeros(1, 20, dtype=torch.bool)
    candidates[0, :10] = True
    real = torch.ones(1, 20, dtype=torch.bool)
    assert kept_columns(similarity, candidates, real, 0.9)[0, :10].sum() == 9
    kept = kept_columns(similarity, candidates, real, 0.2)
    assert kept[0, :10].tolist() == [True, True] + [False] * 8 and kept[0, 10:].all()
