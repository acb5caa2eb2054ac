"""Train the `trained` handoff's adapter, with the model frozen (`latentmas train-handoff`).

The data are transcripts of the same team passing text (a TextMAS results.jsonl of training
questions): what each agent wrote. For each receiver (critic, refiner, solver) the *teacher*
is the model reading the earlier agents' messages as text, and the *student* the same model
reading the previous agent's thoughts in the shared memory instead (the paper's rollout,
each thought realigned and corrected by the adapter). The loss is the cross-entropy of the
student's next-token distributions against the teacher's, over the first tokens of what the
receiver wrote (its message, or the team's answer): so an agent reading the thoughts is
trained to behave as it does reading the sender's words. Only the adapter learns.

Each step reads one question: a no-grad rollout builds the shared memory; for each receiver
the last sender's thoughts are made again with gradients and the receiver's prompt and
target are read on top (the earlier memory is a cache without gradients), so a backward
pass covers about a hundred positions, not the whole conversation. The teacher's
distributions (top-k, with the rest as one bucket) are computed once and kept.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from transformers import DynamicCache

from .engines.forward import cache_keyword, decoder
from .engines.realign import realigner_for
from .errors import LatentMASError
from .evaluation.evaluate import read_results
from .evaluation.records import data_source
from .handoffs.base import option_error
from .handoffs.trained import Adapter, save_adapter
from .models import LoadedModel
from .teams import chat_messages, encode_chat, load_team, shared_conversation, text_context


class TrainSettings(BaseModel):
    """How the adapter is trained (validated once; recorded in the adapter and checkpoints)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    rank: int = Field(64, ge=1, le=4096, description="The adapter's rank (its size: 2 x hidden x rank).")
    latent_steps: int = Field(10, ge=1, le=64, description="Thoughts per sending agent, as at inference.")
    target_tokens: int = Field(
        32, ge=1, le=512, description="How many tokens of each receiver's text the loss reads."
    )
    top_k: int = Field(
        64, ge=1, le=1024, description="Teacher probabilities kept per position (the rest: one bucket)."
    )
    epochs: int = Field(2, ge=1, le=100)
    lr: float = Field(1e-3, gt=0, le=1.0, description="AdamW learning rate.")
    accumulate: int = Field(8, ge=1, le=1024, description="Questions per optimizer step.")
    seed: int = Field(0, ge=0)
    checkpoint_every: int = Field(10, ge=1, description="Optimizer steps between checkpoints.")


def settings_from(**values) -> TrainSettings:
    """Settings from options, with pydantic's complaint as one line naming the option."""
    try:
        return TrainSettings(**values)
    except ValidationError as exc:
        raise option_error(exc) from None


@dataclass
class Transcript:
    """One training question as the text team answered it."""

    id: str
    question: str
    messages: list[str]  # each agent's text, the last agent's answer included


def read_transcripts(path: Path, team_size: int) -> list[Transcript]:
    """A TextMAS results.jsonl -> its transcripts (rows with every agent's text)."""
    if not path.is_file():
        raise LatentMASError(f"no transcripts at {path} (a text_mas results.jsonl of training questions)")
    transcripts = []
    for row in read_results(path):
        texts = [agent.text for agent in row.agents]
        if row.settings.get("method") not in (None, "text_mas") or len(texts) != team_size:
            raise LatentMASError(f"{path}: {row.id} is no transcript of a {team_size}-agent text team")
        if all(texts):
            transcripts.append(Transcript(row.id, row.question, texts))
    if not transcripts:
        raise LatentMASError(f"{path} holds no complete transcript")
    return transcripts


@dataclass
class Target:
    """What the teacher says for one receiver: the tokens it wrote and, at each position,
    its top-k next-token probabilities."""

    tokens: torch.Tensor  # [K]
    indices: torch.Tensor  # [K, top_k]
    probs: torch.Tensor  # [K, top_k]


class Student:
    """The frozen model reading the shared memory, one question at a time (batch 1)."""

    def __init__(self, lm: LoadedModel, adapter: Adapter, settings: TrainSettings) -> None:
        self.lm, self.adapter, self.settings = lm, adapter, settings
        self.model, self.body = lm.model, decoder(lm.model)
        self.key = cache_keyword(type(self.body))
        self.realign = realigner_for(lm.model, "ridge")
        self.embed = lm.model.get_input_embeddings()

    def read(self, cache: DynamicCache, ids: list[int] | None = None, embeds: torch.Tensor | None = None):
        """Append tokens or vectors [n, hidden] to the cache; -> last layer's states [n, hidden]."""
        if ids is not None:
            embeds = self.embed(torch.tensor([ids], device=self.lm.device))[0]
        out = self.body(inputs_embeds=embeds[None].to(self.model.dtype), use_cache=True, **{self.key: cache})
        return out.last_hidden_state[0]

    def thoughts(self, states: torch.Tensor) -> torch.Tensor:
        """Hidden states [n, hidden] -> the thoughts the handoff feeds back [n, hidden]."""
        return self.adapter(states, self.realign(states))

    def loss(self, segments: list[list[int]], targets: list[Target]) -> torch.Tensor:
        """The mean cross-entropy against the teacher over every receiver (backward inside,
        receiver by receiver, so only one receiver's graph is alive at a time)."""
        cache = DynamicCache(config=self.model.config)
        total = 0.0
        with torch.no_grad():
            hidden = self.read(cache, segments[0])[-1]
        for receiver in range(1, len(segments)):
            states = []
            with torch.no_grad():
                start = cache.get_seq_length()
                for _ in range(self.settings.latent_steps):  # the sender's rollout, as at inference
                    states.append(hidden)
                    hidden = self.read(cache, embeds=self.thoughts(hidden[None]))[-1]
                truncate(cache, start)
            thoughts = self.thoughts(torch.stack(states))  # again, with gradients
            target = targets[receiver - 1]
            prompt = self.embed(torch.tensor(segments[receiver], device=self.lm.device))
            read = self.embed(target.tokens[:-1].to(self.lm.device))
            out = self.read(cache, embeds=torch.cat([thoughts.to(prompt.dtype), prompt, read]))
            positions = out[-len(target.tokens) :]  # the last prompt position predicts the first target
            logp = torch.log_softmax(self.model.get_output_embeddings()(positions).float(), dim=-1)
            loss = cross_entropy(logp, target)
            (loss / (len(segments) - 1)).backward()
            total += loss.item()
            truncate(cache, start)
            with torch.no_grad():
                self.read(cache, embeds=thoughts.detach())
                hidden = self.read(cache, segments[receiver])[-1]
        return torch.tensor(total / (len(segments) - 1))


def truncate(cache: DynamicCache, length: int) -> None:
    """Forget every position from `length` on (transformers' `crop` changed meaning across
    releases)."""
    for layer in cache.layers:
        if layer.keys is not None and layer.keys.dim() == 4:
            layer.keys, layer.values = layer.keys[..., :length, :], layer.values[..., :length, :]


def cross_entropy(logp: torch.Tensor, target: Target) -> torch.Tensor:
    """-sum p_teacher log p_student per position, the teacher's mass outside its top-k as one
    bucket against the student's; mean over positions."""
    indices, probs = target.indices.to(logp.device), target.probs.to(logp.device).float()
    chosen = logp.gather(-1, indices)
    rest_teacher = (1 - probs.sum(-1)).clamp_min(0)
    rest_student = torch.log1p(-chosen.exp().sum(-1).clamp(max=1 - 1e-6))
    return (-(probs * chosen).sum(-1) - rest_teacher * rest_student).mean()


@torch.no_grad()
def teacher_targets(
    lm: LoadedModel, team, transcript: Transcript, answer_format: str, settings: TrainSettings
) -> list[Target]:
    """For each receiver: the model reading the earlier messages as text, writing its own."""
    tokenizer, targets = lm.tokenizer, []
    for receiver in range(1, len(team.agents)):
        heard = [(team.agents[j].name, transcript.messages[j]) for j in range(receiver)]
        chat = chat_messages(team.agents[receiver], transcript.question, answer_format, text_context(heard))
        prompt = encode_chat(tokenizer, chat, False)
        tokens = tokenizer(transcript.messages[receiver], add_special_tokens=False).input_ids[
            : settings.target_tokens
        ]
        ids = torch.tensor([prompt + tokens], device=lm.device)
        states = decoder(lm.model)(input_ids=ids).last_hidden_state[
            0, len(prompt) - 1 : len(prompt) - 1 + len(tokens)
        ]
        logits = lm.model.get_output_embeddings()(states)
        probs, indices = torch.softmax(logits.float(), dim=-1).topk(settings.top_k, dim=-1)
        targets.append(Target(torch.tensor(tokens), indices.to(torch.int32).cpu(), probs.half().cpu()))
    return targets


Progress = Callable[[int, int, float, float], None]  # (questions done, total, loss, questions/s)


def train_handoff(
    lm: LoadedModel,
    transcripts_path: Path,
    out: Path,
    answer_format: str,
    settings: TrainSettings | None = None,
    on_progress: Progress | None = None,
) -> Path:
    """Train an adapter for `lm` on the transcripts; checkpoints and the loss curve go to
    `out`, which a rerun resumes from. -> the adapter file (`out/adapter.safetensors`)."""
    settings = settings or TrainSettings()
    team = load_team("sequential")
    transcripts = read_transcripts(transcripts_path, len(team.agents))
    out.mkdir(parents=True, exist_ok=True)
    state = Checkpoint.open(out, lm, settings, data_source(str(transcripts_path)))
    student = Student(lm, state.adapter, settings)
    for parameter in lm.model.parameters():
        parameter.requires_grad_(False)
    total, began, done_now = settings.epochs * len(transcripts), time.perf_counter(), 0
    while state.seen < total:
        epoch, index = divmod(state.seen, len(transcripts))
        order = list(range(len(transcripts)))
        random.Random(settings.seed + epoch).shuffle(order)
        transcript = transcripts[order[index]]
        if transcript.id not in state.teacher:
            state.teacher[transcript.id] = teacher_targets(lm, team, transcript, answer_format, settings)
        segments = shared_conversation(lm.tokenizer, team, transcript.question, answer_format)
        loss = student.loss(segments, state.teacher[transcript.id]).item()
        state.record(loss)
        done_now += 1
        if state.seen % settings.accumulate == 0 or state.seen == total:
            state.step()
            if state.steps % settings.checkpoint_every == 0 or state.seen == total:
                state.save()
        if on_progress is not None:
            on_progress(state.seen, total, state.recent_loss(), done_now / (time.perf_counter() - began))
    return state.finish(lm, transcripts_path)


class Checkpoint:
    """Everything a stopped training needs to go on exactly where it stopped."""

    FILE = "checkpoint.pt"

    def __init__(self, out: Path, adapter: Adapter, settings: TrainSettings, data: str) -> None:
        self.out, self.adapter, self.settings, self.data = out, adapter, settings, data
        self.optimizer = torch.optim.AdamW(adapter.parameters(), lr=settings.lr)
        self.seen, self.steps, self.losses = 0, 0, []
        self.teacher: dict[str, list[Target]] = {}

    @classmethod
    def open(cls, out: Path, lm: LoadedModel, settings: TrainSettings, data: str) -> Checkpoint:
        torch.manual_seed(settings.seed)
        hidden = lm.model.get_input_embeddings().weight.shape[1]
        state = cls(out, Adapter(hidden, settings.rank).to(lm.device), settings, data)
        path = out / cls.FILE
        if path.is_file():
            saved = torch.load(path, weights_only=False)
            if saved["settings"] != settings.model_dump() or saved["data"] != data:
                raise LatentMASError(
                    f"{out} holds a training with other settings or transcripts; choose another --out"
                )
            state.adapter.load_state_dict(saved["adapter"])
            state.optimizer.load_state_dict(saved["optimizer"])
            state.seen, state.steps, state.losses = saved["seen"], saved["steps"], saved["losses"]
            state.teacher = saved["teacher"]
        return state

    def record(self, loss: float) -> None:
        self.seen += 1
        self.losses.append({"question": self.seen, "step": self.steps, "loss": loss})

    def recent_loss(self, window: int = 16) -> float:
        recent = [row["loss"] for row in self.losses[-window:]]
        return sum(recent) / len(recent) if recent else math.nan

    def step(self) -> None:
        for parameter in self.adapter.parameters():
            if parameter.grad is not None:
                parameter.grad /= self.settings.accumulate
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1

    def save(self) -> None:
        """Atomically: a crash while saving leaves the previous checkpoint whole."""
        payload = {
            "settings": self.settings.model_dump(),
            "data": self.data,
            "adapter": self.adapter.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "seen": self.seen,
            "steps": self.steps,
            "losses": self.losses,
            "teacher": self.teacher,
        }
        partial = self.out / (self.FILE + ".partial")
        torch.save(payload, partial)
        partial.replace(self.out / self.FILE)
        (self.out / "losses.jsonl").write_text("".join(json.dumps(row) + "\n" for row in self.losses))
        plot_losses(self.losses, self.out / "loss.png")

    def finish(self, lm: LoadedModel, transcripts: Path) -> Path:
        path = self.out / "adapter.safetensors"
        about = {
            "settings": self.settings.model_dump(),
            "transcripts": self.data,
            "questions_seen": self.seen,
        }
        save_adapter(self.adapter, path, lm.model, about | {"trained_from": str(transcripts)})
        return path


def plot_losses(losses: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not losses:
        return
    xs, ys = [row["question"] for row in losses], [row["loss"] for row in losses]
    window = max(1, len(ys) // 25)
    smooth = [
        sum(ys[max(0, i - window + 1) : i + 1]) / len(ys[max(0, i - window + 1) : i + 1])
        for i in range(len(ys))
    ]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(xs, ys, alpha=0.3, label="per question")
    ax.plot(xs, smooth, label=f"mean of {window}")
    ax.set(
        xlabel="questions read", ylabel="cross-entropy against the teacher (nats)", title="trained handoff"
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
