"""Teams of any shape: the packaged ones, team files, what an agent reads, and clear errors."""

from __future__ import annotations

import json
import sys

import pytest

from latentmas import LatentMAS, Sampling, TextMAS
from latentmas.cli import main
from latentmas.errors import LatentMASError
from latentmas.spec import RunSpec
from latentmas.teams import PACKAGED, Team, load_team

from .conftest import QUESTIONS

SAMPLING = Sampling(max_new_tokens=8)
PLAN = {"name": "planner", "instruction": "Plan it."}
SOLVE = {"name": "solver", "instruction": "Solve it. {answer_format}"}


def test_the_packaged_teams_load_and_say_what_each_agent_reads():
    assert set(PACKAGED) == {"sequential", "hierarchical", "hierarchical_chain"}
    sequential, hierarchical = load_team("sequential"), load_team("hierarchical")
    assert sequential.chain and [a.name for a in sequential.agents][-1] == "solver"
    assert [hierarchical.reads(i) for i in range(4)] == [(), (), (), (0, 1, 2)]
    assert load_team("hierarchical_chain").chain


@pytest.mark.parametrize(
    ("team", "message"),
    [
        (
            {"name": "t", "agents": [PLAN, {**SOLVE, "reads": ["plannr"]}]},
            "agents.1.reads: 'plannr' is no agent",
        ),
        (
            {"name": "t", "agents": [{**PLAN, "reads": ["solver"]}, SOLVE]},
            "agents.0.reads: 'solver' is a later agent",
        ),
        ({"name": "t", "agents": [PLAN, {**SOLVE, "reads": ["solver"]}]}, "would be a cycle"),
        ({"name": "t", "agents": []}, "agents: a team has no answering agent"),
        ({"name": "t", "agents": [PLAN, SOLVE], "answers": "judge"}, "answers: 'judge' is not an agent"),
        (
            {"name": "t", "agents": [PLAN, SOLVE], "answers": "planner"},
            "answers: 'planner' is not the last agent",
        ),
        (
            {"name": "t", "agents": [PLAN, {**SOLVE, "instruction": "  "}]},
            "agents.1.instruction: an agent needs",
        ),
        (
            {"name": "t", "agents": [PLAN, {**PLAN, "instruction": "Again."}]},
            "agents.1.name: 'planner' is already",
        ),
        ({"name": "t", "agents": [{**PLAN, "role": "x"}]}, "agents.0.role: Extra inputs are not permitted"),
    ],
)
def test_a_malformed_team_is_one_clear_error_naming_the_field(team, message):
    with pytest.raises(LatentMASError, match=message):
        load_team(team)


def test_a_team_file_runs_from_the_command_line_and_a_bad_one_is_one_line(
    tmp_path, monkeypatch, capsys, tiny
):
    lm_dir = tmp_path / "model"
    tiny.model.save_pretrained(lm_dir)
    tiny.tokenizer.save_pretrained(lm_dir)
    team = tmp_path / "pair.yaml"
    team.write_text(
        "agents:\n  - name: planner\n    instruction: Plan it.\n  - name: solver\n    instruction: Solve it.\n"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("agents:\n  - name: solver\n    instruction: Solve it.\n    reads: [planner]\n")
    for path, code in ((team, 0), (bad, 2)):
        argv = [
            "latentmas",
            "run",
            "2+2?",
            "--model",
            str(lm_dir),
            "--max-new-tokens",
            "2",
            "--team",
            str(path),
        ]
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as exit_info:
            main()
            raise SystemExit(0)
        out = capsys.readouterr()
        assert exit_info.value.code == code, out.err
    assert "agents.0.reads: 'planner' is no agent of this team" in out.err and "Traceback" not in out.err
    out_dir = tmp_path / "eval"
    for method in ("text_mas", "latent_mas"):  # the older flag still works on its own
        argv = ["latentmas", "eval", "--model", str(lm_dir), "--limit", "1", "--max-new-tokens", "2"]
        argv += ["--method", method, "--topology", "hierarchical", "--out", str(out_dir / method)]
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as exit_info:
            main()
            raise SystemExit(0)
        assert exit_info.value.code == 0, capsys.readouterr().err
    records = {
        m: json.loads((out_dir / m / "run.json").read_text())["team"] for m in ("text_mas", "latent_mas")
    }
    assert records == {"text_mas": "hierarchical", "latent_mas": "hierarchical_chain"}


def test_an_agent_that_reads_no_one_answers_as_it_would_from_a_fresh_memory(tiny):
    """The solver reads no predecessor: the planner's prompt and thoughts sit in the shared
    memory, masked from it, and it answers as the solver of a one-agent team does."""
    alone = Team(name="alone", agents=[SOLVE])
    apart = Team(name="apart", agents=[PLAN, {**SOLVE, "reads": []}])
    together = Team(name="together", agents=[PLAN, SOLVE])
    expected = [a.final_text for a in LatentMAS(tiny, SAMPLING, team=alone).solve(QUESTIONS)]
    assert [
        a.final_text for a in LatentMAS(tiny, SAMPLING, team=apart, latent_steps=3).solve(QUESTIONS)
    ] == expected
    assert [
        a.final_text for a in LatentMAS(tiny, SAMPLING, team=together, latent_steps=3).solve(QUESTIONS)
    ] != expected
    texts = [a.final_text for a in TextMAS(tiny, SAMPLING, team=apart).solve(QUESTIONS)]
    assert texts == [a.final_text for a in TextMAS(tiny, SAMPLING, team=alone).solve(QUESTIONS)]


def test_an_agent_is_given_exactly_the_agents_it_reads_in_text(tiny, monkeypatch):
    """In text_mas the reader is shown only the messages of the agents it reads."""
    shown = []
    from latentmas.handoffs import text

    chat = text.chat_messages

    def recording(agent, question, answer_format, context=""):
        shown.append((agent.name, context))
        return chat(agent, question, answer_format, context)

    monkeypatch.setattr(text, "chat_messages", recording)
    TextMAS(tiny, SAMPLING, team=PICK).solve(QUESTIONS[:1])
    solver = [context for name, context in shown if name == "solver"][0]
    assert "[critic]" in solver and "[planner]" not in solver


PICK = Team(
    name="pick",
    agents=[PLAN, {"name": "critic", "instruction": "Check."}, {**SOLVE, "reads": ["critic"]}],
)


def solver_attention(tiny, monkeypatch, handoff):
    """The solver's memory at its first decoding step (owner of each column, what it sees)
    and its attention weights there, layer by layer."""
    method = LatentMAS(tiny, SAMPLING, team=PICK, latent_steps=2, handoff=handoff)
    eager = tiny.model.config._attn_implementation
    tiny.model.set_attn_implementation("eager")
    weights, seen = [], []
    hooks = [
        layer.self_attn.register_forward_hook(lambda m, i, out: weights.append(out[1].detach().clone()))
        for layer in tiny.model.model.layers
    ]
    from latentmas.engines import transformers as hf

    decode = hf.decode

    def watch(model, memory, *args):
        visible = memory.visible()
        seen.append((memory.owner.clone(), None if visible is None else visible.clone(), memory.agent))
        weights.clear()
        return decode(model, memory, *args)

    monkeypatch.setattr(hf, "decode", watch)
    try:
        method.solve(QUESTIONS[:1])
    finally:
        for hook in hooks:
            hook.remove()
        tiny.model.set_attn_implementation(eager)
    owner, visible, agent = seen[0]
    assert agent == 3
    return owner, visible, weights[: len(tiny.model.model.layers)]


def test_an_agent_reads_only_its_writers_in_a_memory_of_their_columns(tiny, monkeypatch):
    """Without a view, the solver works in a branch of the memory that holds the head's and
    the critic's columns and not the planner's (so its attention never spans them)."""
    owner, visible, layers = solver_attention(tiny, monkeypatch, "latent")
    assert visible is None and set(owner.tolist()) == {0, 2, 3}
    for w in layers:
        assert w[..., : len(owner)][..., owner == 2].sum() > 0


def test_an_agent_reads_only_its_writers_through_a_mask_under_a_view(tiny, monkeypatch):
    """With a view (thoughts weighted per layer) the solver stays in the whole memory: its
    attention on the unread planner's columns is zero in every layer."""
    owner, visible, layers = solver_attention(tiny, monkeypatch, "view:thought_weight=0.5")
    assert not visible[owner == 1].any() and visible[owner == 2].all() and visible[owner == 0].all()
    for w in layers:
        assert w[..., : len(owner)][..., owner == 1].abs().max() == 0
        assert w[..., : len(owner)][..., owner == 2].sum() > 0


@pytest.mark.parametrize("memory", ["full", "latent_only"])
def test_a_branch_joins_the_memory_as_the_mask_would_have_it(tiny, monkeypatch, memory):
    """A hierarchy whose experts read no one: the summarizer's answers and the memory it
    reads are those of the same team run with every expert masked in the whole memory."""
    from latentmas.engines import cache

    team = load_team("hierarchical")
    questions = QUESTIONS[:2]
    memories = []
    joined = cache.SharedMemory.join_branch

    def keep(memory):
        joined(memory)
        memories.append((memory.length, memory.positions.clone(), memory.owner.clone()))

    monkeypatch.setattr(cache.SharedMemory, "join_branch", keep)
    branch, branches = cache.SharedMemory._branch, []

    def counted(memory, columns):
        branches.append(len(columns))
        branch(memory, columns)

    monkeypatch.setattr(cache.SharedMemory, "_branch", counted)
    method = LatentMAS(tiny, SAMPLING, team=team, latent_steps=3, memory=memory)
    branched = [a.final_text for a in method.solve(questions)]
    last_branched = memories[-1]
    memories.clear()
    monkeypatch.setattr(cache.SharedMemory, "_branch", lambda memory, columns: None)
    masked = [a.final_text for a in method.solve(questions)]
    assert len(branches) == 2 and branched == masked  # the 2nd and 3rd experts worked in branches
    length, positions, owner = memories[-1]
    assert length == last_branched[0] and owner.equal(last_branched[2]) and positions.equal(last_branched[1])


def test_topology_keeps_working_and_means_what_it_meant():
    """`--topology hierarchical` in one shared memory is the hierarchy whose experts read the
    experts before them, as it always was; with text it is the one whose experts work alone."""
    assert RunSpec(topology="hierarchical").team == load_team("hierarchical_chain")
    assert RunSpec(topology="hierarchical", method="text_mas").team == load_team("hierarchical")
    assert RunSpec(topology="hierarchical", handoff="states").team == load_team("hierarchical")
    assert RunSpec(topology="sequential").record() == RunSpec(team="sequential").record()
    with pytest.raises(LatentMASError, match="not both"):
        RunSpec(topology="sequential", team="hierarchical")


def test_a_team_the_engine_cannot_mask_is_refused_before_loading():
    with pytest.raises(LatentMASError, match="--engine vllm cannot run a team whose agents read only some"):
        RunSpec(engine="vllm", team="hierarchical")
    assert RunSpec(engine="vllm", team="hierarchical", method="text_mas")  # messages need no mask
    with pytest.raises(LatentMASError, match="every agent must read it"):
        RunSpec(team="hierarchical", question_once=True)


def test_a_packaged_team_is_recorded_by_name_and_any_other_in_full():
    custom = Team(name="pair", agents=[PLAN, SOLVE])
    assert RunSpec(team="hierarchical").record()["team"] == "hierarchical"
    assert RunSpec(team=custom).record()["team"]["agents"][0]["name"] == "planner"


@pytest.mark.parametrize("team, memory", [("pick", "full"), ("hierarchical", "latent_only")])
def test_a_reader_sees_every_column_of_its_writers_from_its_first_token(tiny, monkeypatch, team, memory):
    """The solver reading only the critic starts at the position its readable columns count
    up to, below the critic's last positions (which came after the planner's); the 4-D mask
    orders by column, so its first prompt token still sees all of the critic. (Ordered by
    position it saw about half; the latent_only summarizer saw none of the thoughts.)"""
    from latentmas.engines import forward

    masks = forward.additive_masks
    first_token = []

    def record(memory, width, dtype):
        made = masks(memory, width, dtype)
        if memory.agent == len(chosen.agents):  # the last agent (writer 0 is the head)
            allowed = made[:, 0, 0] == 0  # each row's first query
            visible = memory.visible()
            readable = memory.attention_mask.bool() & (memory.owner < memory.agent)
            readable &= True if visible is None else visible[None]
            first_token.append((int(readable.sum()), int((allowed & readable).sum())))
        return made

    monkeypatch.setattr(forward, "additive_masks", record)
    chosen = PICK if team == "pick" else load_team(team)
    view = "view:thought_weight=0.5"  # a view keeps every agent in the whole memory, masked
    LatentMAS(tiny, SAMPLING, team=chosen, latent_steps=3, memory=memory, handoff=view).solve(QUESTIONS[:2])
    readable, seen = first_token[0]
    assert readable > 0 and seen == readable
