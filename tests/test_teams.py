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


def test_an_agent_is_given_exactly_the_agents_it_reads(tiny, monkeypatch):
    """In latent_mas the reader's attention on an unread agent's columns is zero in every
    layer; in text_mas it is shown only the messages of the agents it reads."""
    team = Team(
        name="pick",
        agents=[PLAN, {"name": "critic", "instruction": "Check."}, {**SOLVE, "reads": ["critic"]}],
    )
    shown = []
    from latentmas.handoffs import text

    chat = text.chat_messages

    def recording(agent, question, answer_format, context=""):
        shown.append((agent.name, context))
        return chat(agent, question, answer_format, context)

    monkeypatch.setattr(text, "chat_messages", recording)
    TextMAS(tiny, SAMPLING, team=team).solve(QUESTIONS[:1])
    solver = [context for name, context in shown if name == "solver"][0]
    assert "[critic]" in solver and "[planner]" not in solver

    method = LatentMAS(tiny, SAMPLING, team=team, latent_steps=2)
    eager = tiny.model.config._attn_implementation
    tiny.model.set_attn_implementation("eager")
    try:
        weights = []
        hooks = [
            layer.self_attn.register_forward_hook(lambda m, i, out: weights.append(out[1].detach().clone()))
            for layer in tiny.model.model.layers
        ]
        owners = []
        from latentmas.engines import transformers as hf

        decode = hf.decode

        def watch(model, memory, *args):
            owners.append((memory.owner.clone(), memory.visible().clone(), memory.agent))
            weights.clear()
            return decode(model, memory, *args)

        monkeypatch.setattr(hf, "decode", watch)
        method.solve(QUESTIONS[:1])
    finally:
        for hook in hooks:
            hook.remove()
        tiny.model.set_attn_implementation(eager)
    owner, visible, agent = owners[0]
    assert (
        agent == 3
        and not visible[owner == 1].any()
        and visible[owner == 2].all()
        and visible[owner == 0].all()
    )
    first_step = weights[: len(tiny.model.model.layers)]  # the solver's first decoding step
    for w in first_step:
        assert w[..., : len(owner)][..., owner == 1].abs().max() == 0
        assert w[..., : len(owner)][..., owner == 2].sum() > 0


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
