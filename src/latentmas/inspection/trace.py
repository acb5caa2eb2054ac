"""What each agent thought: per latent step statistics, logit lens, nearest tokens, PCA map.

A latent thought is a vector, not text. To make it readable we record, for each agent and
each latent step of one question:

- `norm`: the last-layer hidden state's norm;
- `cos_prev`, `cos_first`: its cosine to the previous step's and to the agent's first
  step's hidden state (how much the thought still moves; how far it drifted);
- `logit_lens`: the top-k tokens (with probabilities) when the hidden state goes through
  the LM head, and `entropy` (nats) of that distribution;
- `nearest`: the input-embedding tokens closest (cosine) to the realigned vector that is
  actually fed back;
- `pca`: 2-D coordinates of the realigned vector in a PCA of this question's latent vectors
  and prompt-token embeddings (for the map in `latentmas inspect --html`).

File format (`--trace t.json`): one JSON object `{"format": "latentmas-trace", "version": 1,
"question", "model", "method", "final_text", "agents": [{"role", "prompt", "prompt_tokens",
"prompt_pca", "steps": [{"step", "norm", "cos_prev", "cos_first", "entropy", "logit_lens":
[[token, prob], ...], "nearest": [[token, cos], ...], "pca": [x, y]}]}]}`. `eval --trace
t.jsonl` writes one such object per line. With `--trace-vectors` the raw vectors go to
`t.npz` beside it (`eval`: `t.jsonl.vectors/<id>.npz`): `agent<i>_hidden` and
`agent<i>_embedding`, each [steps, hidden].
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..engines.forward import lm_logits
from ..engines.realign import input_embedding_matrix
from ..errors import LatentMASError
from ..models import LoadedModel

FORMAT = "latentmas-trace"
VERSION = 1


@dataclass
class LatentStepRecord:
    step: int
    norm: float
    cos_prev: float | None
    cos_first: float
    entropy: float
    logit_lens: list[tuple[str, float]]
    nearest: list[tuple[str, float]]
    pca: tuple[float, float] | None = None


@dataclass
class AgentTrace:
    role: str
    prompt: str
    prompt_tokens: list[str] = field(default_factory=list)
    prompt_pca: list[tuple[float, float]] = field(default_factory=list)
    steps: list[LatentStepRecord] = field(default_factory=list)


@dataclass
class Trace:
    question: str
    model: str
    method: dict
    final_text: str = ""
    agents: list[AgentTrace] = field(default_factory=list)
    vectors: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict:
        body = asdict(self)
        body.pop("vectors")
        return {"format": FORMAT, "version": VERSION, **body}

    @classmethod
    def from_json(cls, row: dict) -> Trace:
        if row.get("format") != FORMAT:
            raise LatentMASError('not a latentmas trace (missing "format": "latentmas-trace")')
        if row.get("version") != VERSION:
            raise LatentMASError(f"trace version {row.get('version')} is not supported (expected {VERSION})")
        agents = []
        for a in row["agents"]:
            steps = [
                LatentStepRecord(
                    **{
                        **s,
                        "logit_lens": [tuple(t) for t in s["logit_lens"]],
                        "nearest": [tuple(t) for t in s["nearest"]],
                        "pca": tuple(s["pca"]) if s.get("pca") is not None else None,
                    }
                )
                for s in a["steps"]
            ]
            agents.append(
                AgentTrace(
                    role=a["role"],
                    prompt=a["prompt"],
                    prompt_tokens=a.get("prompt_tokens", []),
                    prompt_pca=[tuple(p) for p in a.get("prompt_pca", [])],
                    steps=steps,
                )
            )
        fields = {k: row[k] for k in ("question", "model", "method", "final_text")}
        return cls(**fields, agents=agents)

    def save(self, path: Path, vectors: bool = False) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        if vectors:
            self.save_vectors(path.with_suffix(".npz"))

    def save_vectors(self, path: Path) -> None:
        """The raw vectors, `agent<i>_hidden` and `agent<i>_embedding` [steps, hidden]."""
        if self.vectors:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(path, **self.vectors)


def read_traces(path: Path) -> list[Trace]:
    """Traces in a `.json` file (one) or a `.jsonl` file (one per line)."""
    if not path.is_file():
        raise LatentMASError(f"trace file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        if len(rows) != 1 and path.suffix == ".json":
            rows = [json.loads(text)]
    except json.JSONDecodeError:
        try:
            rows = [json.loads(text)]
        except json.JSONDecodeError as exc:
            raise LatentMASError(f"{path} is not valid JSON ({exc.msg})") from exc
    try:
        return [Trace.from_json(r) for r in rows]
    except (KeyError, TypeError) as exc:
        raise LatentMASError(f"{path} is not a valid latentmas trace ({exc})") from exc


class TraceRecorder:
    """Collects per-row traces while a LatentMAS batch runs (only when tracing is on)."""

    def __init__(
        self,
        lm: LoadedModel,
        method: dict,
        questions: list[str],
        embeddings: torch.Tensor | None = None,
        top_k: int = 5,
    ) -> None:
        """`embeddings`: the model's input-embedding matrix, if the caller already has it."""
        self.lm, self.top_k = lm, top_k
        if embeddings is None:
            embeddings = input_embedding_matrix(lm.model)
        self.unit_embeddings = torch.nn.functional.normalize(embeddings, dim=-1)  # on the model's device
        self.embeddings = embeddings.cpu()  # [vocab, hidden] float32; prompt vectors for the PCA map
        self.traces = [Trace(question=q, model=lm.name, method=method) for q in questions]
        self._hidden: list[list[list[np.ndarray]]] = [[] for _ in questions]  # row -> agent -> steps
        self._embedded: list[list[list[np.ndarray]]] = [[] for _ in questions]
        self._prompt_ids: list[list[list[int]]] = [[] for _ in questions]
        self._first: torch.Tensor | None = None
        self._previous: torch.Tensor | None = None

    def _tokens(self, ids: list[int]) -> list[str]:
        return [self.lm.tokenizer.decode([i]) for i in ids]

    def begin_agent(self, role: str, prompts: list[list[int]]) -> None:
        for row, ids in enumerate(prompts):
            text = self.lm.tokenizer.decode(ids)
            self.traces[row].agents.append(
                AgentTrace(role=role, prompt=text, prompt_tokens=self._tokens(ids))
            )
            self._hidden[row].append([])
            self._embedded[row].append([])
            self._prompt_ids[row].append(ids)
        self._first = self._previous = None

    def on_step(self, step: int, hidden: torch.Tensor, embedding: torch.Tensor, active: torch.Tensor) -> None:
        """Engine callback: hidden [batch, hidden] (the thought), embedding (what is fed back)."""
        hidden, embedding = hidden.float(), embedding.float()
        probs = torch.softmax(lm_logits(self.lm.model, hidden), dim=-1)
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)
        lens_p, lens_i = probs.topk(self.top_k, dim=-1)
        unit = torch.nn.functional.normalize(embedding, dim=-1).to(self.unit_embeddings.device)
        sims = unit @ self.unit_embeddings.T
        near_s, near_i = sims.topk(self.top_k, dim=-1)
        cos = torch.nn.functional.cosine_similarity
        if self._first is None:
            self._first = hidden
        cos_first = cos(hidden, self._first, dim=-1)
        cos_prev = cos(hidden, self._previous, dim=-1) if self._previous is not None else None
        self._previous = hidden
        for row in active.nonzero().squeeze(-1).tolist():
            self.traces[row].agents[-1].steps.append(
                LatentStepRecord(
                    step=step,
                    norm=hidden[row].norm().item(),
                    cos_prev=None if cos_prev is None else cos_prev[row].item(),
                    cos_first=cos_first[row].item(),
                    entropy=entropy[row].item(),
                    logit_lens=list(zip(self._tokens(lens_i[row].tolist()), lens_p[row].tolist())),
                    nearest=list(zip(self._tokens(near_i[row].tolist()), near_s[row].tolist())),
                )
            )
            self._hidden[row][-1].append(hidden[row].cpu().numpy())
            self._embedded[row][-1].append(embedding[row].cpu().numpy())

    def finish(self, answers: list) -> None:
        """Attach each answer's text and trace, with the question's PCA map fitted."""
        for answer, trace in zip(answers, self.traces_for([a.final_text for a in answers])):
            answer.trace = trace

    def traces_for(self, final_texts: list[str]) -> list[Trace]:
        """Attach the answers, fit each question's PCA map, and return one trace per row."""
        for row, trace in enumerate(self.traces):
            trace.final_text = final_texts[row]
            hidden_size = self.embeddings.shape[1]
            latent = [
                np.stack(s) if s else np.zeros((0, hidden_size), np.float32) for s in self._embedded[row]
            ]
            prompts = [
                self.embeddings[torch.tensor(ids, dtype=torch.long)].numpy() for ids in self._prompt_ids[row]
            ]
            for i, agent_vectors in enumerate(latent):
                trace.vectors[f"agent{i}_embedding"] = agent_vectors
                hidden = self._hidden[row][i]
                trace.vectors[f"agent{i}_hidden"] = np.stack(hidden) if hidden else agent_vectors
            everything = np.concatenate(latent + prompts)
            if len(everything) < 3:
                continue
            mean = everything.mean(axis=0)
            _, _, vt = np.linalg.svd(everything - mean, full_matrices=False)
            basis = vt[:2].T  # [hidden, 2]
            for agent, agent_latent, agent_prompt in zip(trace.agents, latent, prompts):
                for record, xy in zip(agent.steps, (agent_latent - mean) @ basis):
                    record.pca = (float(xy[0]), float(xy[1]))
                agent.prompt_pca = [(float(x), float(y)) for x, y in (agent_prompt - mean) @ basis]
        return self.traces


class Tracing:
    """Observer factory for the agent loop: one `TraceRecorder` per batch of `lm`'s rows,
    with the input-embedding matrix computed once rather than once per batch."""

    def __init__(self, lm: LoadedModel) -> None:
        self.lm = lm
        self.embeddings: torch.Tensor | None = None

    def __call__(self, questions: list[str], method: dict) -> TraceRecorder:
        if self.embeddings is None:
            self.embeddings = input_embedding_matrix(self.lm.model)
        return TraceRecorder(self.lm, method, questions, self.embeddings)
