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
import time
from dataclasses import dataclass

import torch

from . import engine
from .engine import Sampling, SharedMemory
from .errors import LatentMASError
from .methods import Answer, LatentMAS, Method, TextMAS
from .models import LoadedModel
from .paths import cache_dir
from .realign import fingerprint, input_embedding_matrix, ridge_matrix
from .roles import chat_messages, encode_chat, text_context, topology_roles

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
    """'planner=A,solver=B' -> {role: model}; every name must be a role of the topology."""
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
    """Sequential agents, each on its own model; handoff in latent space where the map allows."""

    name = "hetero_mas"

    def __init__(
        self,
        models: dict[str, LoadedModel],
        sampling: Sampling | None = None,
        topology: str = "sequential",
        latent_steps: int | str = 10,
        handoff: str = "latent",
        memory: str = "full",
        realign: str = "ridge",
    ) -> None:
        if memory != "full":
            raise LatentMASError("heterogeneous agents keep the whole shared cache: use --memory full")
        self.roles = topology_roles(topology)
        missing = [r.name for r in self.roles if r.name not in models]
        if missing:
            raise LatentMASError(f"no model for role(s) {', '.join(missing)}")
        super().__init__(models[self.roles[-1].name], sampling)
        self.topology, self.models = topology, models
        self.workers = {
            lm.name: LatentMAS(lm, self.sampling, topology, latent_steps, realign=realign)
            for lm in models.values()
        }
        self.texters = {lm.name: TextMAS(lm, self.sampling, topology) for lm in models.values()}
        self.maps: dict[tuple[str, str], CrossMap] = {}
        self.handoff = handoff
        for before, after in zip(self.roles, self.roles[1:]):
            a, b = models[before.name], models[after.name]
            if a.name != b.name and handoff == "latent":
                cross = self.maps[(a.name, b.name)] = fit_cross_map(a, b)
                if not cross.usable:
                    log.warning(
                        "latent handoff %s -> %s is unreliable (%s); passing text",
                        a.name,
                        b.name,
                        cross.describe(),
                    )
                    self.handoff = "text"

    def describe(self) -> dict:
        return {
            "method": self.name,
            "topology": self.topology,
            "agents": {r.name: self.models[r.name].name for r in self.roles},
            "handoff": self.handoff,
            "realign": next(iter(self.workers.values())).realign_mode,
            "maps": {f"{a}->{b}": m.describe() for (a, b), m in self.maps.items()},
        }

    def _solve(self, questions: list[str], answer_format: str) -> list[Answer]:
        if self.handoff == "text":
            return self._solve_text(questions, answer_format)
        batch = len(questions)
        answers = [Answer(final_text="") for _ in questions]
        thoughts: list[list[torch.Tensor]] = [[] for _ in questions]  # per row, in the current model's space
        memory, current = None, None
        for index, role in enumerate(self.roles):
            lm = self.models[role.name]
            worker = self.workers[lm.name]
            final = index == len(self.roles) - 1
            same_model = lm.name == current
            prompts = [
                encode_chat(lm.tokenizer, chat_messages(role, q, answer_format), same_model)
                for q in questions
            ]
            start = time.perf_counter()
            if not same_model:  # a new model: its cache starts with the thoughts so far
                if current is not None:
                    matrix = self.maps[(current, lm.name)].matrix.to(lm.device)
                    # The previous model may sit on another device than this one.
                    thoughts = [[t.float().to(lm.device) @ matrix for t in row] for row in thoughts]
                memory = SharedMemory.empty(lm.model, batch)
                self._prefill_thoughts(lm, memory, thoughts, prompts)
                current = lm.name
            moved = time.perf_counter() - start
            log_step = _ThoughtLog(batch)
            texts, records = worker._agent(
                role,
                memory,
                prompts,
                0 if final else worker.latent_steps,
                final,
                log_step.on_step,
                self._on_token if final else None,
                questions,
            )
            for row, new in enumerate(log_step.rows):
                thoughts[row].extend(new)
            for answer, text, record in zip(answers, texts, records):
                record.prefill_seconds += moved / batch
                answer.agents.append(record)
                answer.final_text = text or ""
        return answers

    @staticmethod
    def _prefill_thoughts(lm: LoadedModel, memory: SharedMemory, thoughts, prompts: list[list[int]]) -> None:
        """Put mapped earlier thoughts at the head of a new model's cache (after BOS, if any)."""
        bos = lm.tokenizer.bos_token_id
        if bos is not None and all(p and p[0] == bos for p in prompts):
            engine.prefill(lm.model, memory, [[bos]] * len(prompts), lm.tokenizer.pad_token_id)
            for p in prompts:
                del p[0]
        if not any(thoughts):
            return
        dtype = lm.model.get_input_embeddings().weight.dtype
        width = max(len(row) for row in thoughts)
        hidden = lm.model.get_input_embeddings().weight.shape[1]
        embeds = torch.zeros(len(thoughts), width, hidden, dtype=dtype, device=lm.device)
        mask = torch.zeros(len(thoughts), width, dtype=torch.long, device=lm.device)
        for row, vectors in enumerate(thoughts):
            if vectors:
                embeds[row, width - len(vectors) :] = torch.stack(vectors).to(dtype)
                mask[row, width - len(vectors) :] = 1
        engine.append(lm.model, memory, mask, inputs_embeds=embeds, latent=True)

    def _solve_text(self, questions: list[str], answer_format: str) -> list[Answer]:
        """Text handoff: every agent decodes; the next one (any model) reads all of it."""
        answers = [Answer(final_text="") for _ in questions]
        said: list[list[tuple[str, str]]] = [[] for _ in questions]
        for index, role in enumerate(self.roles):
            lm = self.models[role.name]
            texter = self.texters[lm.name]
            final = index == len(self.roles) - 1
            prompts = [
                encode_chat(lm.tokenizer, chat_messages(role, q, answer_format, text_context(s)), False)
                for q, s in zip(questions, said)
            ]
            texter._on_token = self._on_token if final else None
            texts, steps = texter._text_agent(role, prompts, questions, final)
            texter._on_token = None
            for answer, history, text, step in zip(answers, said, texts, steps):
                answer.agents.append(step)
                history.append((role.name, text))
                answer.final_text = text
        return answers


class _ThoughtLog:
    """Collects each row's realigned latent thoughts (input-embedding space) as they are made."""

    def __init__(self, batch: int) -> None:
        self.rows: list[list[torch.Tensor]] = [[] for _ in range(batch)]

    def on_step(self, step: int, hidden: torch.Tensor, embedding: torch.Tensor, active: torch.Tensor) -> None:
        for row in active.nonzero().squeeze(-1).tolist():
            self.rows[row].append(embedding[row].detach().clone())


__all__ = ["CrossMap", "HeteroMAS", "fit_cross_map", "parse_agent_models"]
