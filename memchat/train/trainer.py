"""Training the engine's MemoryLLM on memory episodes: inject a fact turn, then distractor turns, then ask.

One step runs B episodes side by side through the engine's own passes (`MemoryModel.inject` with
per-episode lengths, the shared memory update rule `state.keep_and_append` with per-episode kept rows,
`fill_prefix` and the answering forward), and minimises the cross-entropy of the answer plus a
language-model loss on the recent turns shown in the prompt.

Gradients are truncated the way the official trainer does it: injections run without a graph except the
fact's own and the last `bptt` before the question; memory rows keep their history through the update
rule, so the answer loss still reaches the fact's injection (the `default` adapter) however many turns
came after it. A curriculum raises the number of distractor turns once the model recalls well at the
current distance.

Every step is a pure function of (seed, step) and the weights: episodes come from a generator seeded by
both, so a run saved and resumed (weights, AdamW state and curriculum in safetensors + JSON, never
pickle) continues bit for bit like an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from memchat.engine.config import MemoryConfig
from memchat.engine.model import KVCache, MemoryModel, keep_folds
from memchat.engine.state import keep_and_append
from memchat.errors import MemchatError
from memchat.seeds import seed_of
from memchat.train import nano
from memchat.train.domain import ECHO_SHARE, HELDOUT, PSEUDO_SHARE, TRAIN, Domain, Episode
from memchat.train.text import PAD_ID, ChatEncoder, build_tokenizer, turn_messages

STATE_DIR, MODEL_DIR = "train", "model"
ABSTAIN_PHRASE = "don't know"  # in every UNKNOWN_ANSWERS phrasing


class TrainError(MemchatError):
    pass


@dataclass(frozen=True)
class TrainConfig:
    size: str = "nano"  # nano.SIZES
    num_blocks: int | None = None  # memory pool blocks of K rows per layer; None: the size's own
    # Rows each injection writes per layer (K): its last K rows. None: the size's own (8 for nano, where
    # a fact turn's value ends within its last 8 tokens half the time, within its last 16 four times in
    # five, and a value echoed there was recalled 0.89 at D = 0, one not 0.74).
    num_tokens: int | None = None
    # One matrix for the input embedding and the output head, exported as the two equal tensors the
    # official layout has. Tied, memory reading woke about 2,500 steps sooner (held-out recall 0.09 at step
    # 2,000; untied 0.00 until 4,500), and at steps 10,000-11,000 kept 0.50 at D = 16 against 0.31.
    tie_embeddings: bool = False
    seed: int = 0
    steps: int = 16000  # the learning-rate schedule's length; training stops there
    batch: int = 16
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    bptt: int = 1  # injections before the question that keep their graph (besides the fact's)
    lm_weight: float = 0.25  # weight of the language-model loss on the turns shown in the prompt
    window: int = 4  # at most this many recent turns precede the question (the chat's default window)
    # Share of batches (at distances < window) whose prompt reaches back over the fact, as the chat's does:
    # copying a value from the prompt is learnt long before reading it from memory, and the same heads
    # then serve the memory rows.
    show_fact: float = 0.25
    show_fact_first: int = 1500  # ... and all of them in the first steps: copying is learnt there first
    max_lead: int = 3  # turns injected before the fact (an update episode's old value sits there)
    # Share of batches that answer a new message (a fact's acknowledgement, echoing its value, or chit-chat)
    # rather than a question: without them a model garbles its own replies, which the chat then injects.
    reply_share: float = 0.2
    # Share of recall episodes (with lead turns) where the question was asked before the fact was told: the
    # "don't know" exchange stays in memory and the fact told later must outvote it. Without them the model
    # trained on 20,000 steps answered "You haven't told me" ten turns after being told.
    asked_first: float = 0.25
    # Share of abstain episodes told a fact of another relation where the fact would sit (besides the 0.3
    # of their turns that are other facts anyway). Models trained without it, told one fact and asked about
    # another relation, mostly bent the told value into the slot asked ("You like to drink silver.").
    abstain_other: float = 0.0
    # Share of batches whose abstain question is asked of the initial memory, nothing injected, as a chat's
    # first question is. A tied-embedding run trained without them said it did not know 13 times in 60
    # asked so, and 59 in 60 after one chit-chat turn.
    abstain_empty: float = 0.0
    # Share of training values that are made-up words (domain.PSEUDO_SHARE says why half). The shipped
    # model recalled 1.00 of the training values it had learnt, 0.79 of made-up ones and 0.66 of held-out
    # words at D = 0: copying a string it never saw is what fails, and only made-up values train it.
    made_up_share: float = PSEUDO_SHARE
    # Replies and asked-first episodes begin at this share of the schedule, once recall is learnt, as the
    # shipped model got its replies: a run with both from step 0 ended at 0.57 / 0.37 at D = 0 / 16
    # (held-out, 20,000 steps), the shipped one, which added replies for its last 4,000 steps, at
    # 0.67 / 0.49, and it echoed values about as well (25 and 33 of 40). The runs differ in more than this.
    late_start: float = 0.75
    # Curriculum of distances. At D = 0 the fact is always the newest rows, and a model first learns to
    # read them by position (0.40 at D = 0, 0.00 at D = 1 at step 3,500); yet 300 steps after D = 1 opened
    # it read 0.34 there. A run that started at D ≤ 2 instead learnt no reading at all in 5,000 steps.
    # With levels 12 and 24 as well, a 20,000-step run reached D = 16 only at step 13,350 and D = 24 (by
    # the step limit) at 18,700, and kept 0.30 / 0.10 at D = 16 / 32, where the shipped model, trained up
    # to D = 32, kept 0.49 / 0.30: the levels double. Doubling opened D = 16 at step 10,800 and D = 32 at
    # about 15,500, yet kept 0.34 / 0.10: training D = 32 was not what held the shipped model's long end.
    levels: tuple[int, ...] = (0, 1, 2, 4, 8, 16, 32)
    advance_at: float = 0.6  # recall (teacher-forced) at the top distance that opens the next level
    level_min_steps: int = 150
    level_max_steps: int = 2500  # ... or that opens it anyway after this many steps at the top distance
    vocab_size: int = nano.NANO_VOCAB
    tokenizer_episodes: int = 20000  # episodes of domain text the tokenizer is trained on
    # The tokenizer also learns the chat template's words (text.build_tokenizer): a turn is 5 tokens shorter.
    # Yet the two tied runs with it read no memory until past step 5,000, where tied runs without it read
    # it by step 2,000 (docs/nano-training.md, run23 and run24).
    template_tokens: bool = False
    # The first steps, in which every told fact's acknowledgement echoes its value (then half of them do),
    # so that the value sits among the last rows of the turn, the ones its injection writes, while memory
    # reading is first learnt. At 3,000, two seeds of the shipped recipe read 0.19 and 0.25 of held-out
    # values from memory at step 2,500 (teacher-forced, n = 32), where without it they read 0.00 and 0.06
    # and were still at D = 0 (docs/nano-training.md, "Echoes first").
    echo_first: int = 0
    save_every: int = 250
    eval_every: int = 1000
    eval_n: int = 32
    eval_distances: tuple[int, ...] = (0, 4, 16)

    # Settings added after runs began, with the value that keeps such a run's behaviour when it resumes.
    ADDED_LATER: ClassVar[dict[str, Any]] = {
        "num_blocks": None, "num_tokens": None, "tie_embeddings": False, "abstain_other": 0.0,
        "abstain_empty": 0.0, "made_up_share": PSEUDO_SHARE, "template_tokens": False,
        "echo_first": 0}
    # What a resume may change: the run's length, the shares of the batch kinds that are not recall, so
    # that a finished run can go on with more of one (a model shipped before went on with abstain_empty),
    # and the rows each injection writes, by a whole factor (`widen_injection`).
    MAY_CHANGE_ON_RESUME: ClassVar[frozenset[str]] = frozenset(
        {"steps", "save_every", "eval_every", "reply_share", "abstain_other", "abstain_empty", "num_tokens"})

    def fact_share(self, step: int) -> float:
        """The share of short-distance batches whose prompt shows the fact, at `step`."""
        return 1.0 if step < self.show_fact_first else self.show_fact

    def echo_share(self, step: int) -> float:
        """The share of told facts whose acknowledgement echoes the value, at `step`."""
        return 1.0 if step < self.echo_first else ECHO_SHARE

    def late(self, step: int, share: float) -> float:
        """`share` of a late skill (replies, asked-first episodes) at `step`: none before `late_start`."""
        return share if step >= self.late_start * self.steps else 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        return cls(**values)


@dataclass
class Curriculum:
    """The distance level reached, and a running recall at its top distance."""

    level: int = 0
    ema: float = 0.0
    steps_at_level: int = 0

    def top(self, tc: TrainConfig) -> int:
        return tc.levels[self.level]

    def sample(self, rng: random.Random, tc: TrainConfig) -> int:
        top = self.top(tc)
        return top if rng.random() < 0.5 else rng.randint(0, top)

    def observe(self, tc: TrainConfig, distance: int, recall: float | None) -> None:
        if recall is None or distance != self.top(tc):
            return
        self.steps_at_level += 1
        self.ema = 0.9 * self.ema + 0.1 * recall
        ready = self.ema >= tc.advance_at and self.steps_at_level >= tc.level_min_steps
        if (ready or self.steps_at_level >= tc.level_max_steps) and self.level + 1 < len(tc.levels):
            self.level, self.ema, self.steps_at_level = self.level + 1, 0.0, 0


@dataclass
class Batch:
    turns: list[tuple[Tensor, Tensor]]  # per injected turn: ids [B, n] (right-padded), lengths [B]
    grad_turns: frozenset[int]
    kept: Tensor  # [T, L, B, N - K]: the rows each injection keeps, per layer and episode
    inputs: Tensor  # [B, S]: prompt (recent turns, question) and reply, less the last token
    targets: Tensor  # [B, S]
    answer: Tensor  # [B, S] bool: targets that are reply tokens
    scored: Tensor  # [B, S] bool: the reply tokens that decide recall (the value, or "don't know")
    turn_tokens: Tensor  # [B, S] bool: targets inside the recent turns shown in the prompt
    kinds: list[str]
    distance: int
    fact_shown: bool

    def to(self, device: torch.device) -> Batch:
        """The tensors the model reads, on `device`; the kept-row labels stay on the CPU, where the
        update rule's bookkeeping runs."""
        if device.type == "cpu":
            return self
        return replace(
            self, turns=[(ids.to(device), lengths.to(device)) for ids, lengths in self.turns],
            **{name: getattr(self, name).to(device)
               for name in ("inputs", "targets", "answer", "scored", "turn_tokens")},
        )


@dataclass
class StepResult:
    loss: float
    answer_loss: float
    recall: float | None  # share of recall/update episodes whose value tokens are all argmax-correct
    abstain: float | None  # the same for the "don't know" of the abstain episodes


# --- episodes → tensors -------------------------------------------------------------------------------


def seeded(seed: int, *parts: object) -> tuple[random.Random, torch.Generator]:
    key = ":".join(str(p) for p in (seed, *parts))
    g = torch.Generator().manual_seed(seed_of(seed, *parts))
    return random.Random(key), g


def random_kept(cfg: MemoryConfig, shape: tuple[int, ...], g: torch.Generator) -> Tensor:
    """Ascending kept-row indices [*shape, L, B, N - K]: K distinct random rows dropped per layer (or
    one draw shared by all layers) and per episode, like `state.kept_indices` does per injection."""
    N, K, L = cfg.memory_rows, cfg.drop_count, cfg.num_layers
    *lead, B = shape
    draw_layers = L if cfg.drop_memory_per_layer else 1
    scores = torch.rand(*lead, draw_layers, B, N, generator=g)
    dropped = scores.topk(K, dim=-1).indices
    keep = torch.ones_like(scores, dtype=torch.bool).scatter_(-1, dropped, False)
    kept = keep.nonzero()[:, -1].reshape(*lead, draw_layers, B, N - K)
    return kept.expand(*lead, L, B, N - K) if draw_layers == 1 else kept


def _pad(rows: list[list[int]]) -> tuple[Tensor, Tensor]:
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), PAD_ID, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return ids, torch.tensor([len(r) for r in rows], dtype=torch.long)


def make_batch(
    episodes: list[Episode], encoder: ChatEncoder, cfg: MemoryConfig, tc: TrainConfig, lead: int, window: int,
    g: torch.Generator,
) -> Batch:
    """Tensors for episodes of one shape: the same number of turns, the fact (if any) after `lead` turns.
    The prompt shows the last min(window, distance + 1) turns before the question: the fact only when
    the window reaches back to it."""
    T = len(episodes[0].turns)
    turns = [_pad(encoder.turns([e.turns[t] for e in episodes])) for t in range(T)]
    distance = T - 1 - lead
    shown = min(window, distance + 1)
    recent = [encoder.conversation([m for turn in e.turns[T - shown:] for m in turn_messages(turn)])
              if shown else [] for e in episodes]
    questions = encoder.prompts([[{"role": "user", "content": e.question}] for e in episodes])
    replies = encoder.replies([e.answer for e in episodes])
    seqs = [r + q + a for r, q, a in zip(recent, questions, replies, strict=True)]
    ids, _ = _pad(seqs)
    inputs, targets = ids[:, :-1], ids[:, 1:]
    pos = torch.arange(targets.shape[1]) + 1  # position in the sequence of each target token

    def span(starts: list[int], ends: list[int]) -> Tensor:
        return torch.stack([(pos >= a) & (pos < b) for a, b in zip(starts, ends, strict=True)])

    reply_start = [len(r) + len(q) for r, q in zip(recent, questions, strict=True)]
    answer = span(reply_start, [s + len(a) for s, a in zip(reply_start, replies, strict=True)])
    # Recall is judged on the value's tokens alone: the phrasing around it is a free choice.
    marks = encoder.spans([e.answer for e in episodes], [e.value or ABSTAIN_PHRASE for e in episodes])
    scored = torch.zeros_like(answer)
    for b, (start, m) in enumerate(zip(reply_start, marks, strict=True)):
        scored[b, start - 1 : start - 1 + len(m)] = torch.tensor(m)
    turn_tokens = span([1] * len(recent), [len(r) for r in recent])
    grad_turns = frozenset({lead, *range(max(0, T - tc.bptt), T)})
    kept = random_kept(cfg, (T, len(episodes)), g)
    return Batch(turns, grad_turns, kept, inputs, targets, answer, scored, turn_tokens,
                 [e.kind for e in episodes], distance, shown > distance)


def sample_batch(
    domain: Domain, encoder: ChatEncoder, cfg: MemoryConfig, tc: TrainConfig, seed: int, step: int,
    distance: int, batch: int, kind: str | None = None, show_fact: float = 0.0, asked_first: float = 0.0,
    told_other: float = 0.0, echo: float = ECHO_SHARE,
) -> Batch:
    rng, g = seeded(seed, step)
    if kind == "empty":  # nothing injected and nothing in the prompt but the question
        episodes = [domain.episode(rng, 0, kind=kind) for _ in range(batch)]
        return make_batch(episodes, encoder, cfg, tc, lead=0, window=0, g=g)
    lead = rng.randint(0, tc.max_lead)
    # The chat prompt carries the recent exchanges (also in memory) before the question; none, sometimes.
    window = min(rng.choice([0, 0, 1, 2, 3, 4]), tc.window, distance)
    if distance < tc.window and rng.random() < show_fact:
        window = distance + 1
    episodes = [domain.episode(rng, distance, lead, kind, asked_first, told_other, echo)
                for _ in range(batch)]
    return make_batch(episodes, encoder, cfg, tc, lead, window, g)


# --- the loss -----------------------------------------------------------------------------------------


def inject_turns(model: MemoryModel, memory0: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
    """Inject every turn of every episode, from the initial pool [L, N, d].

    Returns (source [L, B, N], deltas [L, B, T·K, d]): after the last turn, memory row j of episode b in
    layer l is row source[l, b, j] of [initial pool ; that episode's deltas]. An injection reads only
    the last K memory rows, which are always the previous injection's delta, so the memory is never
    rebuilt turn by turn: the engine's update rule runs on these row labels instead. Injections outside
    `batch.grad_turns` run without a graph.
    """
    cfg = model.config
    L, N, K = cfg.num_layers, cfg.memory_rows, cfg.num_tokens
    B = batch.inputs.shape[0]
    last = memory0[:, -K:].unsqueeze(1).expand(L, B, K, memory0.shape[-1])
    source = torch.arange(N).expand(L, B, N)
    deltas = []
    grad = torch.is_grad_enabled()
    with keep_folds(model):
        for t, (ids, lengths) in enumerate(batch.turns):
            with torch.set_grad_enabled(grad and t in batch.grad_turns):
                last = model.inject(ids, last, True, lengths)
            labels = (N + t * K + torch.arange(K)).expand(L, B, K)
            source = keep_and_append(source, batch.kept[t], labels)
            deltas.append(last)
    return source, torch.cat(deltas, dim=2) if deltas else last[:, :, :0]


def episode_memory(memory0: Tensor, source: Tensor, deltas: Tensor) -> Tensor:
    """The memory [L, B, N, d] that `inject_turns` describes."""
    L, B = source.shape[:2]
    pool = torch.cat([memory0.unsqueeze(1).expand(L, B, *memory0.shape[1:]), deltas], dim=2)
    return torch.gather(pool, 2, source.to(pool.device)[..., None].expand(-1, -1, -1, pool.shape[-1]))


def episode_prefix(
    model: MemoryModel, memory0: Tensor, source: Tensor, deltas: Tensor
) -> list[tuple[Tensor, Tensor]]:
    """Per layer, the un-rotated keys and values of every episode's memory rows, as `fill_prefix` would
    compute them from `episode_memory`, but projecting the initial pool once rather than once per episode."""
    B = source.shape[1]
    shared = model.memory_keys_values(memory0.unsqueeze(1))
    own = model.memory_keys_values(deltas)
    out = []
    for layer, ((k0, v0), (k1, v1)) in enumerate(zip(shared, own, strict=True)):
        index = source[layer].to(k1.device)[:, None, :, None].expand(-1, k1.shape[1], -1, k1.shape[-1])
        k = torch.cat([k0.expand(B, -1, -1, -1), k1], dim=2).gather(2, index)
        v = torch.cat([v0.expand(B, -1, -1, -1), v1], dim=2).gather(2, index)
        out.append((k, v))
    return out


def run_batch(
    model: MemoryModel, memory0: Tensor, batch: Batch, tc: TrainConfig
) -> tuple[Tensor, StepResult]:
    """Inject every turn of every episode, ask, and return (loss, metrics)."""
    cfg = model.config
    batch = batch.to(model.device)
    B = batch.inputs.shape[0]
    source, deltas = inject_turns(model, memory0, batch)
    cache = KVCache(cfg, cfg.prefix_rows + batch.inputs.shape[1], model.dtype, model.device, batch=B)
    model.write_prefix(cache, episode_prefix(model, memory0, source, deltas))
    logits = model(batch.inputs, cache)
    ce = F.cross_entropy(logits.flatten(0, 1).float(), batch.targets.flatten(), reduction="none")
    ce = ce.view_as(batch.targets)
    answer_loss = (ce * batch.answer).sum() / batch.answer.sum()
    loss = answer_loss
    if batch.turn_tokens.any():
        loss = loss + tc.lm_weight * (ce * batch.turn_tokens).sum() / batch.turn_tokens.sum()
    correct = ((logits.argmax(-1) == batch.targets) | ~batch.scored).all(dim=1).tolist()
    told = [c for c, k in zip(correct, batch.kinds, strict=True) if k in ("recall", "update")]
    untold = [c for c, k in zip(correct, batch.kinds, strict=True) if k == "abstain"]
    result = StepResult(
        loss.item(), answer_loss.item(),
        sum(told) / len(told) if told else None, sum(untold) / len(untold) if untold else None,
    )
    return loss, result


# --- the training run ---------------------------------------------------------------------------------


@dataclass
class Trainer:
    out: Path
    tc: TrainConfig
    config: dict[str, Any]  # config.json of the model
    model: MemoryModel
    memory: nn.Parameter
    optimizer: torch.optim.Optimizer
    encoder: ChatEncoder
    step: int = 0
    curriculum: Curriculum = field(default_factory=Curriculum)
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0  # training time of the run so far, over all its resumes

    @property
    def cfg(self) -> MemoryConfig:
        return self.model.config

    # --- building and restoring --------------------------------------------------------------------

    @classmethod
    def open(
        cls, out: Path, tc: TrainConfig | None = None, overrides: dict[str, Any] | None = None,
        device: torch.device | str = "cpu",
    ) -> Trainer:
        """Resume the run in `out`, or start one with `tc` (defaults) and `overrides`, training on
        `device`. Only a CPU run is reproducible bit for bit; a run may resume on another device."""
        out = Path(out)
        state = _state_dir(out)
        if state is not None:
            return cls._resume(out, state, overrides or {}, device)
        tc = tc or TrainConfig()
        if overrides:
            tc = TrainConfig.from_json({**tc.to_json(), **overrides})
        if tc.size not in nano.SIZES:
            raise TrainError(f"unknown size {tc.size!r}; expected one of {', '.join(nano.SIZES)}")
        model_dir = out / MODEL_DIR
        if not (model_dir / "tokenizer.json").exists():  # else: the run's own, from a start before any save
            build_tokenizer(model_dir, tc.vocab_size, tc.seed, tc.tokenizer_episodes, tc.template_tokens)
        encoder = ChatEncoder(model_dir)
        chosen = {"num_blocks": tc.num_blocks, "num_tokens": tc.num_tokens}
        sizes = {**nano.SIZES[tc.size], **{k: v for k, v in chosen.items() if v}}
        config = nano.nano_config(sizes, encoder.vocab_size, {"name": nano.NAME})
        model, memory = nano.fresh_model(config, tc.seed, device, tc.tie_embeddings)
        return cls(out, tc, config, model, memory, _optimizer(model, memory, tc), encoder)

    @classmethod
    def _resume(
        cls, out: Path, state: Path, overrides: dict[str, Any], device: torch.device | str
    ) -> Trainer:
        meta = json.loads((state / "state.json").read_text())
        # A setting added after the run started would take today's default, not the behaviour it had,
        # unless ADDED_LATER names the value that keeps it.
        given = set(meta["train_config"]) | set(TrainConfig.ADDED_LATER)
        unknown = sorted({f.name for f in fields(TrainConfig)} - given)
        if unknown:
            raise TrainError(
                f"{out} was started by an older memchat without the settings {', '.join(unknown)}; this one "
                "would go on differently: finish it with that version, or use another --out"
            )
        stored = TrainConfig.from_json({**TrainConfig.ADDED_LATER, **meta["train_config"]})
        changed = {k: v for k, v in overrides.items() if getattr(stored, k) != _plain(v)}
        # Anything else would not continue the same run.
        refused = sorted(set(changed) - TrainConfig.MAY_CHANGE_ON_RESUME)
        if refused:
            given = ", ".join(f"{k}={overrides[k]!r} (run has {getattr(stored, k)!r})" for k in refused)
            raise TrainError(f"{out} holds a run with other settings: {given}; use another --out")
        tc = TrainConfig.from_json({**stored.to_json(), **changed})
        encoder = ChatEncoder(out / MODEL_DIR)
        config = meta["model_config"]
        tensors = load_file(state / "state.safetensors")
        if tc.num_tokens and tc.num_tokens != config["num_tokens"]:
            config, tensors = widen_injection(config, tensors, tc.num_tokens)
        model, memory = nano.fresh_model(config, tc.seed, device, tc.tie_embeddings)
        named = _named(model, memory)
        with torch.no_grad():
            for name, p in named.items():
                p.copy_(tensors[_param_key(name)])
        optimizer = _optimizer(model, memory, tc)
        skeleton = optimizer.state_dict()
        order = [name for group in meta["optimizer_groups"] for name in group]
        skeleton["state"] = {
            i: {key: tensors[_adam_key(name, key)] for key in meta["optimizer_keys"]}
            for i, name in enumerate(order) if _adam_key(name, "step") in tensors
        }
        optimizer.load_state_dict(skeleton)
        return cls(out, tc, config, model, memory, optimizer, encoder, int(meta["step"]),
                   Curriculum(**meta["curriculum"]), meta.get("history", []), meta.get("seconds", 0.0))

    def save(self) -> None:
        """Write the training state (atomically: a new folder renamed into place) and export the model."""
        named = _named(self.model, self.memory)
        tensors = {_param_key(n): p.detach().cpu().clone().contiguous() for n, p in named.items()}
        keys: set[str] = set()
        for n, p in named.items():
            for key, value in self.optimizer.state.get(p, {}).items():
                tensors[_adam_key(n, key)] = value.detach().cpu().clone().contiguous()
                keys.add(key)
        groups = [[_name_of(named, p) for p in g["params"]] for g in self.optimizer.param_groups]
        meta = {
            "step": self.step,
            "train_config": self.tc.to_json(),
            "model_config": self.config,
            "curriculum": asdict(self.curriculum),
            "history": self.history[-200:],
            "seconds": round(self.seconds, 1),
            "optimizer_groups": groups,
            "optimizer_keys": sorted(keys),
        }
        tmp = self.out / f".{STATE_DIR}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(tensors, str(tmp / "state.safetensors"), metadata={"step": str(self.step)})
        (tmp / "state.json").write_text(json.dumps(meta, indent=1) + "\n")
        final, old = self.out / STATE_DIR, self.out / f".{STATE_DIR}.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        config = {**self.config, "memchat": {**self.config.get("memchat", {}), "steps": self.step,
                                             "seed": self.tc.seed}}
        nano.export(self.out / MODEL_DIR, config, self.model, self.memory)

    # --- stepping ----------------------------------------------------------------------------------

    def lr(self, step: int) -> float:
        tc = self.tc
        if step < tc.warmup:
            return tc.lr * (step + 1) / tc.warmup
        progress = min(1.0, (step - tc.warmup) / max(1, tc.steps - tc.warmup))
        return tc.min_lr + 0.5 * (tc.lr - tc.min_lr) * (1 + math.cos(math.pi * progress))

    def train_step(self) -> tuple[StepResult, int]:
        tc = self.tc
        rng, _ = seeded(tc.seed, "distance", self.step)
        distance = self.curriculum.sample(rng, tc)
        kind = "reply" if rng.random() < tc.late(self.step, tc.reply_share) else None
        if kind:  # a reply reads the prompt, not distant memory: short distances are as good and cheaper
            distance = min(distance, tc.window)
        elif tc.abstain_empty and rng.random() < tc.abstain_empty:  # drawn only when set: older runs stay
            kind = "empty"
        batch = sample_batch(
            _domain(TRAIN, tc.made_up_share), self.encoder, self.cfg, tc, tc.seed, self.step, distance,
            tc.batch, kind,
            show_fact=tc.fact_share(self.step), asked_first=tc.late(self.step, tc.asked_first),
            told_other=tc.abstain_other, echo=tc.echo_share(self.step),
        )
        result = self.optimize(batch)
        self.curriculum.observe(tc, distance, None if batch.fact_shown else result.recall)
        self.step += 1
        return result, distance

    def optimize(self, batch: Batch) -> StepResult:
        """One AdamW update on `batch` at the current step's learning rate."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        loss, result = run_batch(self.model, self.memory, batch, self.tc)
        loss.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, self.tc.grad_clip)
        self.optimizer.step()
        return result

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Teacher-forced recall on held-out values at a few distances (fixed episodes, no sampling)."""
        tc, out = self.tc, {}
        for d in tc.eval_distances:
            batch = sample_batch(_domain(HELDOUT), self.encoder, self.cfg, tc, 10_000 + tc.seed, d, d,
                                 tc.eval_n, kind="recall")
            out[str(d)] = run_batch(self.model, self.memory, batch, tc)[1].recall or 0.0
        return out


def widen_injection(
    config: dict[str, Any], tensors: dict[str, Tensor], K: int
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """A run's model config and training state with each injection writing K rows instead of its K₀,
    K a multiple of K₀. The pool keeps its blocks, so it grows to num_blocks × K rows: the initial
    memory and its Adam moments are tiled K / K₀ times, every row kept as many times, so a fact's share
    of the pool and each row's chance to survive a later injection stay what they were. A model
    trained with 8 rows, resumed with 16 for 1,500 steps, recalled more at every distance than the
    same 1,500 steps with 8 (docs/nano-training.md)."""
    K0 = config["num_tokens"]
    if K % K0:
        raise TrainError(f"num_tokens can change on resume only to a multiple of the run's {K0}, not {K}")
    times = K // K0
    config = {**config, "num_tokens": K, "num_memory_tokens": config["num_blocks"] * K}
    tiled = {_param_key("memory"), *(_adam_key("memory", key) for key in ("exp_avg", "exp_avg_sq"))}
    return config, {name: t.repeat(1, times, 1) if name in tiled else t for name, t in tensors.items()}


def _param_key(name: str) -> str:
    """A parameter's tensor in the training state file."""
    return f"param/{name}"


def _adam_key(name: str, key: str) -> str:
    """One of a parameter's AdamW state tensors (step, exp_avg, exp_avg_sq) in the training state file."""
    return f"adam/{name}/{key}"


def _plain(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _domain(split: str, made_up: float = PSEUDO_SHARE) -> Domain:
    from memchat.train.domain import train_domain

    return train_domain(made_up) if split == TRAIN else Domain(split)


def _named(model: MemoryModel, memory: nn.Parameter) -> dict[str, nn.Parameter]:
    return {**dict(model.named_parameters()), "memory": memory}


def _name_of(named: dict[str, nn.Parameter], p: Tensor) -> str:
    return next(n for n, q in named.items() if q is p)


def _optimizer(model: MemoryModel, memory: nn.Parameter, tc: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay on the matrices of the layers only (not embeddings, norms or memory)."""
    decay, plain = [], []
    for name, p in _named(model, memory).items():
        is_matrix = p.dim() == 2 and name != "memory" and "embed_tokens" not in name
        (decay if is_matrix else plain).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": tc.weight_decay}, {"params": plain, "weight_decay": 0.0}],
        lr=tc.lr, betas=(0.9, 0.98), eps=1e-8, foreach=False,
    )


def _state_dir(out: Path) -> Path | None:
    for name in (STATE_DIR, f".{STATE_DIR}.old"):  # .old: a crash between the two renames of save()
        if (out / name / "state.json").exists():
            return out / name
    return None


# --- the loop ------------------------------------------------------------------------------------------


@dataclass
class RunReport:
    steps: int  # steps taken by this run
    step: int  # the run's step count now
    seconds: float
    first_loss: float | None
    last_loss: float | None
    held_out: dict[str, float]
    level: int


def train(
    trainer: Trainer,
    minutes: float | None = None,
    max_steps: int | None = None,
    on_step: Callable[[Trainer, StepResult, int, float], None] | None = None,
    on_eval: Callable[[Trainer, dict[str, float]], None] | None = None,
) -> RunReport:
    """Step until the schedule ends, `minutes` pass or this run took `max_steps`; save on the way out
    (also on Ctrl-C) and every `save_every` steps."""
    tc = trainer.tc
    start, taken, held = time.monotonic(), 0, {}
    first = last = None
    ema = None
    before = trainer.seconds

    def save() -> None:
        trainer.seconds = before + time.monotonic() - start
        trainer.save()

    try:
        while trainer.step < tc.steps and (max_steps is None or taken < max_steps):
            if minutes is not None and time.monotonic() - start >= 60 * minutes:
                break
            result, distance = trainer.train_step()
            taken += 1
            first = result.loss if first is None else first
            ema = result.loss if ema is None else 0.98 * ema + 0.02 * result.loss
            last = ema
            entry = {"step": trainer.step, "loss": round(result.loss, 4), "d": distance}
            if trainer.step % 50 == 0:
                trainer.history.append(entry)
            if on_step:
                on_step(trainer, result, distance, time.monotonic() - start)
            if tc.eval_every and trainer.step % tc.eval_every == 0:
                held = trainer.evaluate()
                trainer.history.append({"step": trainer.step, "held_out": held})
                if on_eval:
                    on_eval(trainer, held)
            if tc.save_every and trainer.step % tc.save_every == 0:
                save()
    finally:
        save()
    seconds = time.monotonic() - start
    return RunReport(taken, trainer.step, seconds, first, last, held, trainer.curriculum.level)
