"""The engine's contract: batch invariance, shared memory bookkeeping, m = 0, memory modes."""

from __future__ import annotations

import pytest
import torch

from latentmas import LatentMAS, LatentSteps, Sampling, SingleAgent, TextMAS
from latentmas.engines import Decoding, Reading, TransformersEngine, cache, forward
from latentmas.engines import sampling as samplers
from latentmas.engines import transformers as hf
from latentmas.engines.cache import SharedMemory
from latentmas.engines.protocol import ALL
from latentmas.engines.rollout import rollout
from latentmas.teams import load_team, shared_conversation
from latentmas.tiny import tiny_loaded

from .conftest import QUESTIONS

SAMPLING = Sampling(max_new_tokens=8)


def thinking(engine, memory, realign: str = "ridge"):
    """The paper's latent step on `engine`: (hidden, active) -> (thought, new hidden)."""
    realigner = engine.realigner(realign)

    def step(hidden, active):
        thought = realigner(hidden)
        return thought, engine.append_thoughts(memory, thought, active)

    return step


def _solo_and_batched(method, questions):
    batched = method.solve(questions)
    alone = [method.solve([q])[0] for q in questions]
    return batched, alone


def test_latent_mas_batch_of_8_matches_batch_of_1(tiny_any):
    method = LatentMAS(tiny_any, SAMPLING, latent_steps=3)
    batched, alone = _solo_and_batched(method, QUESTIONS)
    assert [a.final_text for a in batched] == [a.final_text for a in alone]
    assert [a.output_tokens for a in batched] == [a.output_tokens for a in alone]
    # The answers really depend on the question: a model that ignores its input would pass trivially.
    assert len({a.final_text for a in alone}) > 4


@pytest.mark.parametrize("method_cls", [SingleAgent, TextMAS])
def test_text_methods_batch_of_8_match_batch_of_1(tiny, method_cls):
    method = method_cls(tiny, SAMPLING)
    batched, alone = _solo_and_batched(method, QUESTIONS)
    assert [a.final_text for a in batched] == [a.final_text for a in alone]


def test_padding_changes_nothing_inside_the_engine(tiny):
    """Direct engine check: hidden states of a padded row equal those of the row alone."""
    model, tok = tiny.model, tiny.tokenizer
    short, long = tok("2+2").input_ids, tok("A much longer prompt with many tokens in it").input_ids
    engine = TransformersEngine(tiny)
    with torch.inference_mode():
        both = SharedMemory.empty(model, 2)
        h2 = forward.prefill(model, both, [short, long], tok.pad_token_id)
        h2, _ = rollout(thinking(engine, both), h2, 4)
        alone = SharedMemory.empty(model, 1)
        h1 = forward.prefill(model, alone, [short], tok.pad_token_id)
        h1, _ = rollout(thinking(engine, alone), h1, 4)
    # Equal up to float summation order (a different batch shape picks other kernels).
    torch.testing.assert_close(h2[0], h1[0], atol=1e-4, rtol=1e-3)
    assert both.next_position.tolist() == [len(short) + 4, len(long) + 4]


def _record_memory(monkeypatch):
    """Record the memory's real length per row at every prefill and before decoding."""
    events = []
    prefill, decode = TransformersEngine.prefill, hf.decode

    def recording_prefill(self, memory, prompts, reading=ALL):
        events.append(("before_prefill", memory.real_lengths().tolist(), memory.is_latent.clone()))
        return prefill(self, memory, prompts, reading)

    def recording_decode(model, memory, sampling, stop_ids, *rest):
        events.append(("decode", memory.real_lengths().tolist(), memory.is_latent.clone()))
        return decode(model, memory, sampling, stop_ids, *rest)

    monkeypatch.setattr(TransformersEngine, "prefill", recording_prefill)
    monkeypatch.setattr(hf, "decode", recording_decode)
    return events


@pytest.mark.parametrize("steps", [0, 5])
def test_cache_length_after_each_agent(tiny, monkeypatch, steps):
    events = _record_memory(monkeypatch)
    questions = QUESTIONS[:3]
    LatentMAS(tiny, SAMPLING, latent_steps=steps).solve(questions)
    roles = load_team("sequential").agents
    segments = [shared_conversation(tiny.tokenizer, load_team("sequential"), q, "") for q in questions]
    before_prefills = [lengths for kind, lengths, _ in events if kind == "before_prefill"]
    for agent in range(len(roles)):
        expected = [sum(len(s[j]) + steps for j in range(agent)) for s in segments]
        assert before_prefills[agent] == expected
    # m = 0: the final agent still reads everything the earlier agents put in the cache.
    (decode_lengths,) = [lengths for kind, lengths, _ in events if kind == "decode"]
    assert decode_lengths == [sum(len(x) for x in s) + steps * (len(roles) - 1) for s in segments]


def test_zero_latent_steps_final_answer_depends_on_earlier_agents(tiny):
    """With m = 0 the last agent must still attend to the earlier agents' prompts."""
    method = LatentMAS(tiny, Sampling(max_new_tokens=12), latent_steps=0)
    with torch.inference_mode():
        segments = shared_conversation(tiny.tokenizer, method.team, QUESTIONS[0], "")
        memory = SharedMemory.empty(tiny.model, 1)
        forward.prefill(tiny.model, memory, [segments[-1]], tiny.tokenizer.pad_token_id)
        final_alone = hf.decode(tiny.model, memory, method.sampling, method.engine.stop_ids)
    final_alone_text = tiny.tokenizer.decode(final_alone[0], skip_special_tokens=True).strip()
    assert method.solve([QUESTIONS[0]])[0].final_text != final_alone_text


def test_latent_only_memory_keeps_only_latent_thoughts(tiny, monkeypatch):
    events = _record_memory(monkeypatch)
    steps = 4
    method = LatentMAS(tiny, SAMPLING, latent_steps=steps, memory="latent_only")
    answers = method.solve(QUESTIONS[:2])
    before_prefills = [(lengths, latent) for kind, lengths, latent in events if kind == "before_prefill"]
    for agent, (lengths, latent) in enumerate(before_prefills):
        assert lengths == [steps * agent] * 2
        assert bool(latent.all())
    assert all(a.latent_steps == steps * 3 for a in answers)


def test_latent_only_with_batches_is_batch_invariant(tiny):
    method = LatentMAS(tiny, SAMPLING, latent_steps=3, memory="latent_only")
    batched, alone = _solo_and_batched(method, QUESTIONS)
    assert [a.final_text for a in batched] == [a.final_text for a in alone]


def test_hierarchical_topology_runs_all_roles(tiny):
    (answer,) = LatentMAS(tiny, SAMPLING, team="hierarchical", latent_steps=2).solve(["2+2"])
    assert [a.role for a in answer.agents] == ["math_expert", "science_expert", "code_expert", "summarizer"]
    assert [a.mode for a in answer.agents] == ["latent"] * 3 + ["text"]
    (text_answer,) = TextMAS(tiny, SAMPLING, team="hierarchical").solve(["2+2"])
    assert all(a.mode == "text" for a in text_answer.agents)


def test_records_count_tokens_per_agent(tiny):
    (latent,) = LatentMAS(tiny, SAMPLING, latent_steps=3).solve(["2+2"])
    (text,) = TextMAS(tiny, SAMPLING).solve(["2+2"])
    assert latent.latent_steps == 9 and text.latent_steps == 0
    assert latent.output_tokens == latent.agents[-1].output_tokens <= SAMPLING.max_new_tokens
    assert text.output_tokens == sum(a.output_tokens for a in text.agents)
    assert all(a.input_tokens > 0 for a in latent.agents + text.agents)


def test_sampling_is_reproducible_with_a_seed_and_really_samples(tiny):
    def answer(seed: int, temperature: float = 1.0) -> str:
        sampling = Sampling(max_new_tokens=8, temperature=temperature, top_p=0.9, seed=seed)
        return SingleAgent(tiny, sampling).solve(["2+2"])[0].final_text

    assert answer(7) == answer(7)
    greedy = answer(0, temperature=0.0)
    # Argmax would give the greedy text for every seed; real sampling differs for some.
    assert any(answer(seed) != greedy for seed in range(6))
    assert len({answer(seed) for seed in range(6)}) > 1


def test_next_tokens_draws_from_the_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.3, 1e-9]])).expand(1, 3)
    generator = [torch.Generator().manual_seed(0)]
    draws = [samplers.next_tokens(logits, Sampling(temperature=1.0), generator).item() for _ in range(2000)]
    assert 0.65 < draws.count(0) / 2000 < 0.75
    assert draws.count(2) == 0
    # top-p 0.5 keeps only the most likely token.
    nucleus = [
        samplers.next_tokens(logits, Sampling(temperature=1.0, top_p=0.5), generator).item()
        for _ in range(50)
    ]
    assert set(nucleus) == {0}


@pytest.mark.parametrize("method_cls", [SingleAgent, TextMAS, LatentMAS])
def test_sampled_answers_do_not_depend_on_the_batch(tiny, method_cls):
    # Few latent steps: a random-weight model amplifies float noise (other kernels for other
    # batch shapes) with every thought fed back, and its near-flat distributions turn that
    # noise into other draws. Real models are far less chaotic.
    options = {"latent_steps": 3} if method_cls is LatentMAS else {}
    sampling = Sampling(max_new_tokens=10, temperature=1.0, top_p=0.95, seed=3)
    method = method_cls(tiny, sampling, **options)
    batched, alone = _solo_and_batched(method, QUESTIONS)
    assert [a.final_text for a in batched] == [a.final_text for a in alone]
    greedy = method_cls(tiny, SAMPLING, **options).solve(QUESTIONS)
    assert [a.final_text for a in batched] != [a.final_text for a in greedy]  # it did sample


def test_cache_keyword_follows_the_decoder_signature():
    class New:
        def forward(self, input_ids=None, cache=None, **kwargs): ...

    class Old:
        def forward(self, input_ids=None, past_key_values=None, **kwargs): ...

    class Neither:
        def forward(self, input_ids=None, **kwargs): ...

    assert forward.cache_keyword(New) == "cache"
    assert forward.cache_keyword(Old) == "past_key_values"
    with pytest.raises(Exception, match="takes no KV cache"):
        forward.cache_keyword(Neither)


def test_the_cache_is_really_read(tiny):
    """Prefill then one step equals one forward over the whole sequence: a cache passed under
    the wrong keyword is ignored silently, and the step would see only its own token."""
    model, tok = tiny.model, tiny.tokenizer
    ids = tok(QUESTIONS[0]).input_ids
    with torch.inference_mode():
        memory = SharedMemory.empty(model, 1)
        forward.prefill(model, memory, [ids[:-1]], tok.pad_token_id)
        stepped = forward.prefill(model, memory, [ids[-1:]], tok.pad_token_id)
        whole = forward.prefill(model, SharedMemory.empty(model, 1), [ids], tok.pad_token_id)
    torch.testing.assert_close(stepped, whole, atol=1e-4, rtol=1e-3)


def test_growing_cache_matches_transformers_dynamic_cache(tiny):
    """The in-place cache is an optimisation only: same tokens as stock DynamicCache."""
    from transformers import DynamicCache

    model, tok = tiny.model, tiny.tokenizer
    prompts = [tok(q).input_ids for q in QUESTIONS[:4]]
    method = LatentMAS(tiny, SAMPLING, latent_steps=3)
    outputs = []
    for stock in (False, True):
        with torch.inference_mode():
            memory = SharedMemory.empty(model, len(prompts))
            if stock:
                memory.cache = DynamicCache(config=model.config)
            hidden = forward.prefill(model, memory, prompts, tok.pad_token_id)
            rollout(thinking(method.engine, memory), hidden, 70)  # crosses a regrowth
            memory.keep_columns(torch.arange(memory.length - 50, memory.length))
            forward.prefill(model, memory, prompts, tok.pad_token_id)
            outputs.append(hf.decode(model, memory, Sampling(max_new_tokens=20), method.engine.stop_ids))
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize("temperature", [1e-300, 1e-6, 1e-3, 5.0])
def test_extreme_temperatures_still_sample(tiny, temperature):
    """Found by the server fuzz: a tiny temperature overflowed the softmax into NaN."""
    sampling = Sampling(max_new_tokens=4, temperature=temperature, top_p=0.5, seed=1)
    assert SingleAgent(tiny, sampling).solve(["2+2"])[0].output_tokens > 0


@pytest.mark.parametrize("arch", ["gemma3", "mistral"])
def test_sliding_window_engine_matches_the_models_own_forward(arch):
    """Prompt longer than the window, fed in pieces and token by token: every hidden state
    equals the model's own full forward (its own sliding-window mask)."""
    lm = tiny_loaded(arch)
    ids = lm.tokenizer(QUESTIONS[4]).input_ids
    assert len(ids) > 3 * lm.model.config.sliding_window
    with torch.inference_mode():
        full = forward.decoder(lm.model)(input_ids=torch.tensor([ids])).last_hidden_state[0]
        memory = SharedMemory.empty(lm.model, 1)
        forward.prefill(lm.model, memory, [ids[:10]], 0)
        stepped = [forward.prefill(lm.model, memory, [ids[10:30]], 0)[0]]
        stepped += [forward.prefill(lm.model, memory, [[t]], 0)[0] for t in ids[30:]]
    torch.testing.assert_close(torch.stack(stepped), full[29:], atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("arch", ["gemma3", "mistral"])
def test_sliding_window_latent_only_is_batch_invariant(arch):
    lm = tiny_loaded(arch)
    method = LatentMAS(lm, SAMPLING, latent_steps=3, memory="latent_only")
    batched, alone = _solo_and_batched(method, QUESTIONS)
    assert [a.final_text for a in batched] == [a.final_text for a in alone]


def test_question_once_states_the_question_only_to_the_first_agent(tiny):
    question = "How many legs do 3 spiders have?"
    team = load_team("sequential")
    every = shared_conversation(tiny.tokenizer, team, question, "")
    once = shared_conversation(tiny.tokenizer, team, question, "", question_once=True)
    decoded = [tiny.tokenizer.decode(s) for s in once]
    assert "spiders" in decoded[0] and not any("spiders" in d for d in decoded[1:])
    assert once[0] == every[0] and all(len(o) < len(e) for o, e in zip(once[1:], every[1:]))
    method = LatentMAS(tiny, SAMPLING, latent_steps=2, question_once=True)
    (answer,) = method.solve([question])
    assert answer.input_tokens == sum(map(len, once)) and answer.final_text
    assert method.describe()["question_once"] is True


def test_rows_that_stop_early_leave_the_batch_without_disturbing_the_others(tiny):
    """Rows that emit a stop token at different steps are dropped from the batch (their cache
    rows go); every row must still decode exactly what it decodes alone."""
    model, tok = tiny.model, tiny.tokenizer
    prompts = [tok(q).input_ids for q in QUESTIONS[:4]]
    greedy = Sampling(max_new_tokens=10)

    def decode(rows: list[list[int]], stops: set[int]) -> list[list[int]]:
        with torch.inference_mode():
            memory = SharedMemory.empty(model, len(rows))
            forward.prefill(model, memory, rows, tok.pad_token_id)
            return hf.decode(model, memory, greedy, stops)

    free = decode(prompts, set())
    # Stop tokens picked from two rows' own outputs, so those rows end early at different steps.
    stops = {free[0][2], free[1][5]}
    batched = decode(prompts, stops)
    alone = [decode([p], stops)[0] for p in prompts]
    assert batched == alone
    lengths = sorted(len(row) for row in batched)
    assert lengths[0] < 10 and lengths[0] < lengths[-1]  # rows really left at different steps


def test_streamed_tokens_reach_their_own_row_when_the_batch_is_sliced(tiny):
    """An engine that holds fewer rows than the batch gets it in slices; each slice's rows must
    be streamed under their place in the whole batch, with the tokens that make the answer."""
    method = LatentMAS(tiny, SAMPLING, latent_steps=2)
    for one in method.engines.values():
        one.max_batch = 3
    streamed: dict[int, list[int]] = {}
    answers = method.solve(QUESTIONS, on_token=lambda row, token: streamed.setdefault(row, []).append(token))
    assert len(answers) == len(QUESTIONS) and sorted(streamed) == list(range(len(QUESTIONS)))
    for row, answer in enumerate(answers):
        assert tiny.tokenizer.decode(streamed[row], skip_special_tokens=True).strip() == answer.final_text


@pytest.mark.parametrize("topology", ["sequential", "hierarchical"])
def test_text_mas_agents_read_what_they_should_of_each_other(tiny, monkeypatch, topology):
    """Sequential TextMAS agents read every earlier agent's text; hierarchical experts work
    alone and only the final agent reads them all."""
    from latentmas.handoffs import text

    prompts = []
    encode = text.encode_chat

    def recording(tokenizer, messages, continuation):
        if QUESTIONS[0] in messages[-1]["content"]:  # not the probes that find the shared prefix
            prompts.append(" ".join(m["content"] for m in messages))
        return encode(tokenizer, messages, continuation)

    monkeypatch.setattr(text, "encode_chat", recording)
    answer = TextMAS(tiny, SAMPLING, team=topology).solve([QUESTIONS[0]])[0]
    texts = [agent.text for agent in answer.agents]
    assert len(prompts) == len(texts) and all(texts)
    for index, prompt in enumerate(prompts):
        final = index == len(prompts) - 1
        expected = texts[:index] if final or topology == "sequential" else []
        assert [t for t in texts[:index] if t in prompt] == expected


def test_each_row_samples_from_its_own_seed(tiny):
    """Two rows with the same prompt but different row seeds draw different tokens, and each
    row draws what it draws alone with its seed: the seed goes with the row, not the batch."""
    model, tok = tiny.model, tiny.tokenizer
    prompt = tok(QUESTIONS[0]).input_ids
    sampling = Sampling(max_new_tokens=10, temperature=1.0, seed=0)

    def decode(seeds: list[int]) -> list[list[int]]:
        with torch.inference_mode():
            memory = SharedMemory.empty(model, len(seeds))
            forward.prefill(model, memory, [prompt] * len(seeds), tok.pad_token_id)
            return hf.decode(model, memory, sampling, set(), row_seeds=seeds)

    both = decode([11, 12])
    assert both[0] != both[1]
    assert both == [decode([11])[0], decode([12])[0]]
    # The engine interface passes the row seeds through.
    with torch.inference_mode():
        chosen = TransformersEngine(tiny)
        memory = chosen.new_memory(2)
        chosen.prefill(memory, [prompt, prompt])
        assert chosen.decode(memory, Decoding(sampling, [11, 12])) == both


def test_a_budget_of_one_token_is_legal_and_zero_is_refused(tiny):
    from latentmas.errors import LatentMASError

    answer = SingleAgent(tiny, Sampling(max_new_tokens=1)).solve([QUESTIONS[0]])[0]
    assert answer.output_tokens <= 1
    with pytest.raises(LatentMASError, match="max_new_tokens"):
        SingleAgent(tiny, Sampling(max_new_tokens=0))


def test_shared_prefix_changes_no_answer_and_is_really_shared(tiny_any, monkeypatch):
    """The prompts' common head is prefilled once and copied: the same answers as reading
    every prompt whole, at batch 1 and 8, for every method; and the first agent's own
    prefill really reads only what follows the prefix."""
    whole = TransformersEngine(tiny_any, share_prefixes=False)
    widths = []
    prefill = forward.prefill

    def recording(model, memory, prompts, pad_id):
        widths.append(max(map(len, prompts)))
        return prefill(model, memory, prompts, pad_id)

    monkeypatch.setattr(forward, "prefill", recording)  # the shared prefix's own read
    monkeypatch.setattr(hf, "prefill", recording)  # every agent's
    for make in (lambda e: LatentMAS(e, SAMPLING, latent_steps=3), lambda e: TextMAS(e, SAMPLING)):
        expected = make(whole).solve(QUESTIONS)
        read_whole = widths[0]
        widths.clear()
        shared = TransformersEngine(tiny_any)
        batched, alone = _solo_and_batched(make(shared), QUESTIONS)
        for answers in (batched, alone):
            assert [a.final_text for a in answers] == [a.final_text for a in expected]
        prefix_width, first_agent_width = widths[:2]  # the prefix alone, once; then the rest
        assert first_agent_width == read_whole - prefix_width
        widths.clear()


def test_a_row_that_lacks_the_prefix_reads_its_whole_prompt(tiny):
    """Rows decide alone whether the shared prefix is theirs: one that does not begin with
    it gets the prefix columns as padding, and each row's state equals its state alone."""
    tok = tiny.tokenizer
    prefix = tok("You are one member of a team of problem-solving agents.").input_ids
    prompts = [prefix + tok(" What is 7 * 8?").input_ids, tok("Something else entirely, 2+2").input_ids]
    shared, whole = TransformersEngine(tiny), TransformersEngine(tiny, share_prefixes=False)
    with torch.inference_mode():
        memory = shared.new_memory(2)
        shared.prefill(memory, prompts, Reading(prefix))
        hidden = shared.last_hidden(memory)
        assert memory.real_lengths().tolist() == [len(p) for p in prompts]
        for row, prompt in enumerate(prompts):
            alone = whole.new_memory(1)
            whole.prefill(alone, [prompt])
            torch.testing.assert_close(hidden[row], whole.last_hidden(alone)[0], atol=1e-4, rtol=1e-3)


def test_dropping_rows_moves_them_inside_the_buffer():
    """Rows leave the cache in place (no new buffer, no copy of the whole cache), hold what
    the stock selection would, and later steps append after them as before."""
    from transformers.cache_utils import DynamicLayer

    torch.manual_seed(0)
    grown, stock = cache.GrowingLayer(), DynamicLayer()
    prompt = torch.randn(2, 5, 2, 7, 4)  # (keys, values) [batch, heads, length, dim]
    for layer in (grown, stock):
        layer.update(*prompt)
    step = torch.randn(2, 5, 2, 1, 4)
    for layer in (grown, stock):
        layer.update(*step)
    storage = grown.keys.data_ptr()
    rows = torch.tensor([1, 3, 4])
    grown.batch_select_indices(rows)
    stock.batch_select_indices(rows)
    assert grown.keys.data_ptr() == storage  # moved in place, the buffer kept
    assert torch.equal(grown.keys, stock.keys) and torch.equal(grown.values, stock.values)
    after = torch.randn(2, 3, 2, 1, 4)
    for layer in (grown, stock):
        layer.update(*after)
    assert grown.keys.data_ptr() == storage  # the next step still writes into the same buffer
    assert torch.equal(grown.keys, stock.keys) and torch.equal(grown.values, stock.values)
    # Any other order is still honoured (by the stock copy).
    grown.batch_select_indices(torch.tensor([2, 0]))
    stock.batch_select_indices(torch.tensor([2, 0]))
    assert torch.equal(grown.keys, stock.keys) and torch.equal(grown.values, stock.values)


def test_latent_steps_are_parsed_once_where_text_enters():
    """Text becomes a typed `LatentSteps` at the edge (RunSpec, the CLI); the method takes
    only typed values, so nothing downstream parses again."""
    from latentmas import LatentSteps, RunSpec
    from latentmas.errors import LatentMASError

    assert RunSpec(latent_steps="auto:40").latent_steps == LatentSteps(40, auto=True)
    assert RunSpec(latent_steps="auto").latent_steps == LatentSteps(40, auto=True)
    assert RunSpec(latent_steps=5).latent_steps == LatentSteps(5)
    assert str(LatentSteps(12, auto=True)) == "auto:12" and str(LatentSteps(3)) == "3"
    for bad in ("-1", "lots", "auto:x", 10**6):
        with pytest.raises(LatentMASError, match="latent steps"):
            RunSpec(latent_steps=bad)
    with pytest.raises(LatentMASError, match="whole number"):
        LatentSteps("3")  # text goes through parse, at the edge


def test_the_thought_fed_back_is_the_one_observers_see(tiny):
    """The handoff's realignment is what goes into the memory, and what observers are shown."""
    method = LatentMAS(tiny, SAMPLING, latent_steps=2, handoff="latent:realign=norm")
    assert method.describe()["handoff"]["realign"] == "norm"
    seen, fed = [], []
    eng = method.engine
    append = TransformersEngine.append_thoughts

    def recording(self, memory, vectors, active):
        fed.append(vectors.clone())
        return append(self, memory, vectors, active)

    with torch.inference_mode(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(TransformersEngine, "append_thoughts", recording)
        memory = eng.new_memory(2)
        eng.prefill(memory, [[1, 2, 3], [4, 5]])
        method.handoff.think(eng, memory, LatentSteps(2), lambda i, h, e, a: seen.append(e.clone()))
    assert len(seen) == len(fed) == 2 and all(torch.equal(s, f) for s, f in zip(seen, fed))
    norms = seen[0].norm(dim=-1)
    torch.testing.assert_close(norms, torch.full_like(norms, float(norms[0])))  # norm-matched
