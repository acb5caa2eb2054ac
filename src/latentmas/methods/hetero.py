"""Agents on different models: latent thoughts cross models through a fitted linear map.

Consecutive agents on the same model share its KV cache as in `LatentMAS`. When the next
agent runs on another model B, B's cache starts with every earlier latent thought, mapped
from model A's input-embedding space into B's, followed by B's prompt.

The map is ridge regression, in closed form, from A's input embeddings to B's, fitted on
the tokens whose surface strings both vocabularies share (cached on disk per model pair).
Its quality is measured on held-out shared tokens: mean cosine between mapped and true
embeddings, and top-1 recovery (the mapped vector's nearest B embedding, among all shared
tokens, is the right token). When too few tokens are shared or the quality is below the
thresholds, agents hand over text instead, with a warning.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import torch

from ..engines import Engine, LatentSteps, Sampling
from ..engines.realign import fingerprint, input_embedding_matrix, ridge_matrix
from ..errors import LatentMASError
from ..handoffs import HandoffConfig, LatentConfig, TextConfig, build
from ..models import LoadedModel
from ..paths import cache_dir
from ..teams import Team, load_team, team_record
from .loop import Method, as_engine

log = logging.getLogger(__name__)

MIN_SHARED_TOKENS = 500
MIN_TOP1 = 0.2
MIN_COSINE = 0.3


@dataclass
class CrossMap:
    """Model A's input-embedding space -> model B's: e_B ~= e_A @ matrix."""

    matrix: torch.Tensor  # [hidden_a, hidden_b]
    shared_tokens: int
    heldout_cosine: float
    heldout_top1: float

    @property
    def usable(self) -> bool:
        return (
            self.shared_tokens >= MIN_SHARED_TOKENS
            and self.heldout_top1 >= MIN_TOP1
            and self.heldout_cosine >= MIN_COSINE
        )

    def describe(self) -> str:
        return (
            f"{self.shared_tokens} shared tokens, held-out cosine {self.heldout_cosine:.3f}, "
            f"top-1 recovery {self.heldout_top1:.1%}"
        )


def surface_strings(lm: LoadedModel) -> dict[str, int]:
    """Each ordinary token's text as it appears in decoded output -> its id (first id wins)."""
    tokenizer = lm.tokenizer
    special = set(tokenizer.all_special_ids)
    strings: dict[str, int] = {}
    for token, index in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        if index in special:
            continue
        text = tokenizer.convert_tokens_to_string([token])
        if text.strip() and "\ufffd" not in text:
            strings.setdefault(text, index)
    return strings


def fit_cross_map(a: LoadedModel, b: LoadedModel, lam: float = 1e-3, holdout: float = 0.1) -> CrossMap:
    """Fit (or read from the disk cache) the ridge map from A's embeddings to B's.

    The cache key is read off the raw embedding weights and vocabulary sizes, so a cache
    hit needs neither the vocabulary scan nor the full embedding matrices.
    """
    weight_a = a.model.get_input_embeddings().weight.detach().float().cpu()
    weight_b = b.model.get_input_embeddings().weight.detach().float().cpu()
    key = fingerprint(weight_a, weight_b, lam)
    key += f"-{len(a.tokenizer)}-{len(b.tokenizer)}-{holdout}"
    path = cache_dir() / "crossmap" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.pt"
    if path.is_file():
        saved = torch.load(path, weights_only=True)
        return CrossMap(saved["matrix"], int(saved["shared"]), float(saved["cosine"]), float(saved["top1"]))
    strings_a, strings_b = surface_strings(a), surface_strings(b)
    shared = sorted(set(strings_a) & set(strings_b))
    # On the CPU: the two models (and the held-out indices) may live on different devices.
    emb_a, emb_b = input_embedding_matrix(a.model).cpu(), input_embedding_matrix(b.model).cpu()
    if len(shared) < 10:
        return CrossMap(torch.zeros(emb_a.shape[1], emb_b.shape[1]), len(shared), 0.0, 0.0)
    ids_a = torch.tensor([strings_a[s] for s in shared])
    ids_b = torch.tensor([strings_b[s] for s in shared])
    order = torch.randperm(len(shared), generator=torch.Generator().manual_seed(0))
    n_test = max(1, int(len(shared) * holdout))
    test, train = order[:n_test], order[n_test:]
    matrix = ridge_matrix(emb_a[ids_a[train]], emb_b[ids_b[train]], lam)
    with torch.no_grad():
        mapped = emb_a[ids_a[test]] @ matrix
        truth = emb_b[ids_b[test]]
        cosine = torch.nn.functional.cosine_similarity(mapped, truth, dim=-1).mean().item()
        candidates = torch.nn.functional.normalize(emb_b[ids_b], dim=-1)
        nearest = (torch.nn.functional.normalize(mapped, dim=-1) @ candidates.T).argmax(dim=-1)
        top1 = (nearest == test).float().mean().item()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"matrix": matrix, "shared": len(shared), "cosine": cosine, "top1": top1}, path)
    return CrossMap(matrix, len(shared), cosine, top1)


def parse_agent_models(text: str, roles: list[str]) -> dict[str, str]:
    """'planner=A,solver=B' -> {agent: model}; every name must be an agent of the team."""
    mapping = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        role, sep, model = item.partition("=")
        if not sep or not model.strip():
            raise LatentMASError(f"--agent-models expects role=model pairs, not {item!r}")
        if role.strip() not in roles:
            raise LatentMASError(
                f"unknown role {role.strip()!r} in --agent-models; roles are {', '.join(roles)}"
            )
        mapping[role.strip()] = model.strip()
    return mapping


class HeteroMAS(Method):
    """Sequential agents, each on its own model; handoff in latent space where the map allows.

    A configuration of the agent loop with one engine per role: when the shared
    conversation moves to another model (`enter_engine`), every earlier thought is mapped
    into the new model's embedding space and put at the head of its memory. With a text
    handoff (or an unreliable map) the agents decode and pass text instead.
    """

    name = "hetero_mas"

    def __init__(
        self,
        models: dict[str, LoadedModel],
        sampling: Sampling | None = None,
        team: str | dict | Team = "sequential",
        latent_steps: int | str | LatentSteps = 10,
        handoff: HandoffConfig | None = None,
    ) -> None:
        """`handoff`: `LatentConfig` (the default; its `realign` maps thoughts back into each
        model's inputs) or `TextConfig` (the agents pass text)."""
        handoff = handoff or LatentConfig()
        if not isinstance(handoff, LatentConfig | TextConfig):
            raise LatentMASError("--agent-models hands over latent thoughts or text, not another handoff")
        team = load_team(team)
        if not team.chain:
            raise LatentMASError("--agent-models runs a team in which each agent reads every one before it")
        roles = team.agents
        missing = [r.name for r in roles if r.name not in models]
        if missing:
            raise LatentMASError(f"no model for role(s) {', '.join(missing)}")
        per_model = {lm.name: as_engine(lm) for lm in models.values()}
        engines = {r.name: per_model[models[r.name].name] for r in roles}
        self.models = models
        self.maps: dict[tuple[str, str], CrossMap] = {}
        if isinstance(handoff, LatentConfig):
            for before, after in zip(roles, roles[1:]):
                a, b = models[before.name], models[after.name]
                if a.name != b.name:
                    cross = self.maps[(a.name, b.name)] = fit_cross_map(a, b)
                    if not cross.usable:
                        log.warning(
                            "latent handoff %s -> %s is unreliable (%s); passing text",
                            a.name,
                            b.name,
                            cross.describe(),
                        )
                        handoff = TextConfig()
        super().__init__(engines, team, sampling, build(handoff))
        self.latent_steps = LatentSteps.parse(latent_steps)
        self.watch(self.start_thought_log)
        self.thoughts = ThoughtLog(0)

    def describe(self) -> dict:
        """As a RunSpec: the method that ran (text_mas where a poor map made the agents pass
        text) with every role's model."""
        thinks = self.handoff.shares_memory
        described = {
            "method": "latent_mas" if thinks else "text_mas",
            "team": team_record(self.team),
            "agent_models": ",".join(f"{r.name}={self.models[r.name].name}" for r in self.roles),
            "handoff": self.handoff.config.model_dump(),
        }
        if thinks:
            steps = self.latent_steps
            described["latent_steps"] = str(steps) if steps.auto else steps.count
        return described

    def notes(self) -> list[str]:
        lines = [f"map {a}->{b}: {m.describe()}" for (a, b), m in self.maps.items()]
        if self.maps and not self.handoff.shares_memory:
            lines.append("warning: a map is below the quality thresholds; agents pass text instead")
        return lines

    def start_thought_log(self, questions: list[str], method: dict) -> ThoughtLog:
        self.thoughts = ThoughtLog(len(questions))
        return self.thoughts

    def enter_engine(
        self, engine: Engine, previous: Engine | None, first_prompts: list[list[int]]
    ) -> tuple[Any, list[list[int]]]:
        """A new model's memory starts with every earlier thought, mapped into its space
        (after BOS, where the prompts begin with it); -> (that memory, the first prompts
        less that BOS)."""
        rows = self.thoughts.rows
        if previous is not None:
            matrix = self.maps[(previous.lm.name, engine.lm.name)].matrix.to(engine.lm.device)
            # The previous model may sit on another device than this one.
            rows[:] = [[t.float().to(engine.lm.device) @ matrix for t in row] for row in rows]
        memory = engine.new_memory(len(first_prompts))
        if not any(rows):
            return memory, first_prompts
        bos = engine.tokenizer.bos_token_id
        if bos is not None and all(p and p[0] == bos for p in first_prompts):
            engine.prefill(memory, [[bos]] * len(first_prompts))
            first_prompts = [p[1:] for p in first_prompts]
        width = engine.lm.model.config.get_text_config().hidden_size
        engine.append_vectors(memory, [torch.stack(r) if r else torch.zeros(0, width) for r in rows])
        return memory, first_prompts


class ThoughtLog:
    """Observer: each row's realigned latent thoughts (input-embedding space) as they are made."""

    def __init__(self, batch: int) -> None:
        self.rows: list[list[torch.Tensor]] = [[] for _ in range(batch)]

    def begin_agent(self, role: str, prompts: list[list[int]]) -> None:
        pass

    def on_step(self, step: int, hidden: torch.Tensor, embedding: torch.Tensor, active: torch.Tensor) -> None:
        for row in active.nonzero().squeeze(-1).tolist():
            self.rows[row].append(embedding[row].detach().clone())

    def finish(self, answers: list) -> None:
        pass


__all__ = ["CrossMap", "HeteroMAS", "fit_cross_map", "parse_agent_models"]
