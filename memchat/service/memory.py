"""The memory service: one memory (a profile × a model) is a loaded engine plus its store.

The journal is the truth; the memory state is the checkpoint's initial memory with every live journal
row injected in id order with that row's seed. The state file, snapshots and the engine's tensors are
caches of that fold: on open we load the newest consistent one and replay the rows after it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import secrets
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

# Only torch-free store modules at import time: `memchat memory stats` imports this module for `Options`
# and must answer without paying for torch. The state and snapshot modules load where they are used.
from memchat.seeds import seed_of
from memchat.service.chunk import chunk_text
from memchat.store import (
    UPTO_KEY,
    CorruptState,
    Journal,
    MemoryBusy,
    MemoryLayout,
    MemoryLock,
    NewRow,
    Row,
    memchat_home,
    memory_dir,
    model_key,
    sha256_text,
)

if TYPE_CHECKING:
    from memchat.engine.config import MemoryConfig
    from memchat.engine.generate import Sampling

FORGOTTEN_KEY = "journal_forgotten"  # forgotten rows with id <= upto when the state was saved
ORIGINS_KEY = "origins"  # JSON {journal row id: memory rows it still occupies}
LTM_ROWS_KEY = "ltm_rows"  # M+: long-term rows in the state
MODEL_KEY = "model"
RATE_KEY = "inject_tokens_per_s"  # journal meta: measured replay speed, for forget's time estimate
# Journal meta: JSON [[first journal row id, setup], …], the setups that computed the live memory's rows.
# Another quantization, dtype or device computes the same injection slightly differently, so a rebuild
# matches the memory bit for bit only under the setups that built it.
SETUPS_KEY = "setups"
LIVE = ("pending", "applied")

Progress = Callable[[int, int], None]  # (done, total)


@dataclass(frozen=True)
class Options:
    """What opening a memory needs; the CLI fills it from flags, environment and config."""

    home: Path | None = None
    profile: str = "default"
    model: str = "tiny"
    device: str | None = None
    quant: str | None = None
    seed: int | None = None  # fixes the seed salt (tests, benchmarks); otherwise random per memory
    snapshot_budget: int = 8 << 30
    snapshot_every: int = 256
    checkpoint_every: int = 32
    # M+ long-term memory segment files: 16,384 rows of 4096 bf16 values, so few files, and collecting
    # one frees a lot.
    ltm_segment_bytes: int = 128 << 20


@dataclass(frozen=True)
class ReplayCost:
    rows: int
    tokens: int
    seconds: float | None  # from the injection speed measured on this machine, once known


@dataclass
class InjectResult:
    ids: list[int] = field(default_factory=list)
    tokens: int = 0
    queued: bool = False  # journaled only: another process holds the memory and will apply them


def derive_seed(salt: str, row_id: int) -> int:
    """The drop seed of a journal row: fixed by the row id and the memory's salt."""
    return seed_of(salt, row_id)


def memory_layout(options: Options) -> MemoryLayout:
    home = memchat_home(options.home)
    return MemoryLayout(memory_dir(home, options.profile, model_key(options.model)))


class Memory:
    """An open memory. As the lock holder it applies rows; otherwise it only journals them."""

    def __init__(
        self,
        options: Options,
        layout: MemoryLayout,
        journal: Journal,
        lock: MemoryLock,
        tokenizer,
        engine=None,
        notice: Callable[[str], None] | None = None,
    ):
        self.options = options
        self.layout = layout
        self.journal = journal
        self.lock = lock
        self.tokenizer = tokenizer
        self.engine = engine
        self.notice = notice or (lambda message: print(message, file=sys.stderr))
        from memchat.store.snapshots import SnapshotPolicy, Snapshots

        self.snapshots = Snapshots(
            layout.snapshots, SnapshotPolicy(options.snapshot_budget, options.snapshot_every)
        )
        self.salt = (
            str(options.seed)
            if options.seed is not None
            else journal.meta_setdefault("salt", secrets.token_hex(8))
        )
        self.ltm = None  # M+, as the holder: the long-term rows on disk (store.ltm.SegmentLog)
        if engine is not None and engine.config.is_mplus:
            from memchat.store.ltm import SegmentLog

            self.ltm = SegmentLog(layout.ltm, options.ltm_segment_bytes)
        self._saved_upto = -1  # the journal row the state file includes up to, once known
        self._unsaved = 0
        self._timed_tokens, self._timed_seconds = 0, 0.0

    # --- opening and closing --------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        options: Options,
        *,
        notice: Callable[[str], None] | None = None,
        progress: Progress | None = None,
    ) -> Memory:
        """Open (creating if needed) the memory; load the model only if we get the single-writer lock."""
        from memchat.engine.load import resolve
        from memchat.engine.tokenizer import Tokenizer

        layout = memory_layout(options)
        journal = Journal(layout.journal)
        journal.meta_setdefault(MODEL_KEY, options.model)
        lock = MemoryLock(layout.root, command=" ".join(["memchat", *sys.argv[1:2]]))
        cache_dir = memchat_home(options.home) / "cache"
        holder = lock.try_acquire()
        try:
            folder = resolve(options.model, cache_dir)
            if not holder:
                return cls(options, layout, journal, lock, Tokenizer.from_folder(folder), notice=notice)
            from memchat.engine.engine import Engine

            check_gpu_fits(options.model, folder, options.device, options.quant)
            engine = Engine.load(folder, options.device, options.quant, cache_dir=cache_dir)
            memory = cls(options, layout, journal, lock, engine.tokenizer, engine, notice)
            memory._restore(progress)
        except BaseException:
            if holder:
                lock.release()
            journal.close()
            raise
        return memory

    @property
    def holder(self) -> bool:
        return self.engine is not None

    def require_holder(self) -> None:
        """Raise MemoryBusy, naming the process that holds the memory, unless we do."""
        if not self.holder:
            owner = self.lock.owner()
            raise MemoryBusy(self.layout.root, owner.pid if owner else None, owner.command if owner else None)

    def close(self) -> None:
        """Save what is unsaved and let go of the memory."""
        try:
            if self.holder and self.upto != self._saved_upto:
                self.checkpoint()
        finally:
            if self.ltm is not None:
                self.ltm.close()
            if self.holder:
                self.lock.release()
            self.journal.close()

    def __enter__(self) -> Memory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writing --------------------------------------------------------------------------------------

    def chunks(self, text: str) -> list[str]:
        return chunk_text(text, self.tokenizer.offsets, self._max_tokens())

    def _max_tokens(self) -> int:
        if self.engine is not None:
            return self.engine.config.max_injection_tokens
        from memchat.engine.config import DEFAULT_MAX_INJECTION_TOKENS

        return DEFAULT_MAX_INJECTION_TOKENS

    def inject(
        self, text: str, source_kind: str, source_name: str = "", progress: Progress | None = None
    ) -> InjectResult:
        """Journal `text` as injections, then (as the holder) apply them."""
        return self.inject_chunks(self.chunks(text), source_kind, source_name, progress)

    def inject_chunks(
        self, chunks: list[str], source_kind: str, source_name: str = "", progress: Progress | None = None
    ) -> InjectResult:
        rows = [
            NewRow(
                text=c,
                source_kind=source_kind,
                source_name=source_name,
                token_count=len(self.tokenizer.encode(c)),
                chunk_sha256=sha256_text(c),
            )
            for c in chunks
        ]
        if not rows:
            return InjectResult()
        ids = self.journal.append(rows, seed_fn=lambda row_id: derive_seed(self.salt, row_id))
        result = InjectResult(ids, sum(r.token_count for r in rows), queued=not self.holder)
        if self.holder:
            self.apply_pending(progress)
        return result

    def apply_pending(self, progress: Progress | None = None) -> int:
        """Apply rows journaled since the last apply, ours or other processes'. Returns how many."""
        return self._replay(self.journal.rows(self.upto, "pending"), progress)

    def _replay(self, rows: Iterable[Row], progress: Progress | None = None, total: int | None = None) -> int:
        rows = list(rows)
        if rows:
            self._record_setup()
        done = 0
        for row in rows:
            start = time.perf_counter()
            before = self.engine.state.ltm
            self._timed_tokens += self._apply(row)
            self._record_pruned(before, row.id)
            self._timed_seconds += time.perf_counter() - start
            self._unsaved += 1
            done += 1
            if row.status == "pending":
                self.journal.mark_applied([row.id])
            if progress:
                progress(done, total or len(rows))
            if self._unsaved >= self.options.checkpoint_every:
                self.checkpoint()
        return done

    def _apply(self, row: Row) -> int:
        """Inject one journal row with its own seed; returns its token count."""
        ids = self.tokenizer.encode(row.text)
        self.engine.inject(ids, seed=row.seed, origin=row.id)
        return len(ids)

    def _record_pruned(self, before, row_id: int) -> None:
        """Tombstone the long-term rows that applying journal row `row_id` pruned, for `collect`."""
        if self.ltm is None:
            return
        from memchat.engine.state import pruned_row_ids

        for layer, ids in enumerate(pruned_row_ids(before, self.engine.state.ltm)):
            if len(ids):
                self.ltm.tombstone(layer, ids, row_id)

    def checkpoint(self) -> None:
        """Save the state atomically with the journal row it includes up to; snapshot when due; then
        delete the long-term values no restorable state needs any more."""
        tensors = self.engine.state.to_tensors()
        meta = {
            UPTO_KEY: str(self.upto),
            FORGOTTEN_KEY: str(self.journal.forgotten_count(self.upto)),
            MODEL_KEY: self.options.model,
            ORIGINS_KEY: json.dumps(origin_counts(tensors["origins"])),
        }
        if self.ltm is not None:
            meta[LTM_ROWS_KEY] = str(self.ltm_rows())
            self.ltm.flush()  # the rows the state names reach the disk before the state does
        from memchat.store.state import save_state

        save_state(self.layout.state, tensors, meta)
        self._saved_upto, self._unsaved = self.upto, 0
        if self._timed_seconds > 1.0:
            self.journal.set_meta(RATE_KEY, f"{self._timed_tokens / self._timed_seconds:.1f}")
        if self.snapshots.due(self.upto, self.layout.state.stat().st_size):
            self.snapshots.link(self.layout.state, self.upto)
        if self.ltm is not None:
            self.ltm.collect(min((s.upto for s in self.snapshots.list()), default=self.upto))

    # --- chatting -----------------------------------------------------------------------------------

    def reply(self, messages: list[dict[str, str]], sampling=None, generator=None) -> Iterator[str]:
        """Stream the assistant's reply to `messages` (the recent-turn window ending with the user's turn),
        answered from memory. Nothing is injected: call `remember_turn` once the reply is complete."""
        return self.engine.stream(self.tokenizer.encode_prompt(messages), sampling, generator)

    def remember_turn(self, user: str, assistant: str) -> InjectResult:
        return self.inject(self.tokenizer.format_turn(user, assistant), "chat", "chat")

    def sampling(self, **overrides: float | int | None) -> Sampling:
        """The checkpoint's generation defaults with the caller's settings; None keeps a default."""
        return self.engine.sampling.with_overrides(**overrides)

    def describe(self) -> dict[str, str | int]:
        """What runs: model, folder, device, dtype, quantization and the size of the memory pool."""
        from memchat.engine.quantize import default_mode

        model, cfg, pool = self.engine.model, self.engine.config, self.engine.state.memory
        return {
            "model": self.options.model,
            "folder": str(self.engine.folder),
            "device": str(model.device),
            "dtype": str(model.dtype).removeprefix("torch."),
            "quant": self.options.quant or default_mode(model.device),
            "memory_rows": cfg.memory_rows,
            "layers": cfg.num_layers,
            "hidden": cfg.hidden_size,
            "memory_bytes": pool.numel() * pool.element_size(),
            "max_injection_tokens": cfg.max_injection_tokens,
        }

    @functools.cached_property
    def setup(self) -> str:
        """What computes injections here, to the bit: quantization, dtype and device (a GPU by its name)."""
        import torch

        about, device = self.describe(), self.engine.model.device
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
        return f"{about['quant']} {about['dtype']} on {where}"

    def _record_setup(self) -> None:
        """Note that the rows applied next (all after `upto`) are computed with this run's setup. Written
        only when that changes the record: every chat turn passes here."""
        recorded = setups(self.journal)
        history = [entry for entry in recorded if entry[0] <= self.upto]
        if not history or history[-1][1] != self.setup:
            history.append((self.upto + 1, self.setup))
        if history != recorded:
            self.journal.set_meta(SETUPS_KEY, json.dumps(history))

    # --- restoring ------------------------------------------------------------------------------------

    @property
    def upto(self) -> int:
        """Every live journal row with id <= upto is in the engine's state. Read from the state itself
        (the newest memory rows carry the id of the injection that wrote them), so an interrupt between
        an injection and any bookkeeping cannot make the two disagree."""
        return self.engine.state.last_injection

    def _restore(self, progress: Progress | None) -> None:
        self.engine.state = self._saved_state()
        self._saved_upto = self.upto
        # Applied to the state but not yet marked (an interrupt came in between): mark them now.
        self.journal.mark_applied(r.id for r in self.journal.rows(0, "pending") if r.id <= self.upto)
        rows = list(self.journal.rows(self.upto, LIVE))
        if rows:
            self._replay(rows, progress)

    def _saved_state(self):
        """The newest saved state consistent with the journal (else a snapshot, else the checkpoint's)."""
        from memchat.engine.state import LogMismatch
        from memchat.store.state import load_state

        try:
            tensors, meta = load_state(self.layout.state)
            if self._consistent(meta):
                return self._to_state(tensors)
            self.notice("memory: the saved state predates a forget; rebuilding it from the journal")
        except FileNotFoundError:
            pass
        except (CorruptState, LogMismatch) as error:
            self.notice(f"memory: {error}; falling back to the last good snapshot and the journal")
        return self._base_before(self.journal.last_id() + 1)

    def _consistent(self, meta: dict[str, str]) -> bool:
        upto = int(meta.get(UPTO_KEY, -1))
        return upto >= 0 and meta.get(FORGOTTEN_KEY) == str(self.journal.forgotten_count(upto))

    def _base_before(self, row_id: int):
        """The newest usable snapshot holding only rows < row_id, else the checkpoint's memory."""
        from memchat.engine.state import LogMismatch

        def report(path: Path, error: CorruptState) -> None:
            self.notice(f"memory: {error}")

        while (found := self.snapshots.load_before(row_id, on_corrupt=report)) is not None:
            tensors, meta, row_id = found  # an older one next, if this one is unusable
            if not self._consistent(meta):
                continue
            try:
                return self._to_state(tensors)
            except LogMismatch as error:
                self.notice(f"memory: snapshot {row_id}: {error}; trying an older one")
        return self._initial_state(self.ltm)

    def _initial_state(self, log):
        """The checkpoint's memory; M+ long-term rows go to `log`, emptied first (what it holds belongs
        to the later states this one replaces)."""
        from memchat.engine.load import load_initial_state

        model = self.engine.model
        if log is not None:
            log.rewind([0] * model.config.num_layers, 0)
        return load_initial_state(self.engine.folder, model.config, model.dtype, model.device, log)

    def _to_state(self, tensors):
        """A saved state over this memory's long-term log, cut back to the rows the state was built over
        (later ones came from injections the journal replays)."""
        from memchat.engine.state import MemoryState

        model = self.engine.model
        state = MemoryState.from_tensors(tensors, self.ltm)
        state.memory = state.memory.to(model.device, model.dtype)
        if self.ltm is not None:
            self.ltm.rewind(state.ltm.log_lengths, state.last_injection)
        return state

    # --- forgetting -----------------------------------------------------------------------------------

    def select(self, since: float | None = None, source: str | None = None) -> list[int]:
        return self.journal.select_ids(since=since, source=source)

    def replay_cost(self, ids: list[int]) -> ReplayCost:
        """What a forget of `ids` must replay (from the snapshot it restores), and about how long."""
        if not ids:
            return ReplayCost(0, 0, 0.0)
        base = max((s.upto for s in self.snapshots.list() if s.upto < ids[0]), default=0)
        drop = set(ids)
        rows = [r for r in self.journal.rows(base, LIVE) if r.id not in drop]
        tokens = sum(r.token_count for r in rows)
        rate = float(self.journal.get_meta(RATE_KEY) or 0) or None
        return ReplayCost(len(rows), tokens, tokens / rate if rate else None)

    def forget(self, ids: list[int], progress: Progress | None = None) -> int:
        """Forget journal rows exactly: the memory becomes what it would be had they never been injected.

        Order matters for crash safety: snapshots that saw the rows go first, then the journal marks
        them (the truth changes here), then the state is rebuilt from the newest snapshot before them.
        A crash in between leaves a saved state the journal shows to be stale, so the next open rebuilds.
        """
        self.require_holder()
        if not ids:
            return 0
        self.snapshots.invalidate_from(ids[0])
        files = {row.source_name for row in map(self.journal.get, ids) if row and row.source_kind == "file"}
        forgotten = self.journal.forget(ids)
        for path in files:  # so a later ingest of the file injects it again
            self.journal.remove_file(path)
        self.engine.state = self._base_before(ids[0])
        rows = list(self.journal.rows(self.upto, LIVE))
        self._replay(rows, progress)
        self.checkpoint()
        return forgotten

    # --- inspecting -----------------------------------------------------------------------------------

    def digest(self) -> str:
        return memory_digest(self.engine.state.to_tensors())

    def origins(self) -> dict[int, int]:
        return origin_counts(self.engine.state.origins)

    def ltm_rows(self) -> int | None:
        """M+: how many long-term rows the memory holds."""
        ltm = self.engine.state.ltm
        return sum(len(ids) for ids in ltm.row_ids) if ltm is not None else None

    def verify(self, progress: Progress | None = None) -> tuple[str, str]:
        """(live digest, digest rebuilt from the checkpoint and the whole journal); the rebuild writes its
        long-term rows to a scratch log, never to this memory's."""
        live = self.engine.state
        upto = self.upto
        with self._scratch_log() as scratch:
            try:
                self.engine.state = self._initial_state(scratch)
                rows = [r for r in self.journal.rows(0, LIVE) if r.id <= upto]
                for done, row in enumerate(rows, 1):
                    self._apply(row)
                    if progress:
                        progress(done, len(rows))
                rebuilt = self.digest()
            finally:
                self.engine.state = live
        return memory_digest(live.to_tensors()), rebuilt

    @contextlib.contextmanager
    def _scratch_log(self) -> Iterator:
        """M+: a long-term log in a temporary folder beside this memory's; None for MemoryLLM."""
        if self.ltm is None:
            yield None
            return
        from memchat.store.ltm import SegmentLog

        with tempfile.TemporaryDirectory(dir=self.layout.root, prefix=".verify-") as folder:
            log = SegmentLog(Path(folder), self.options.ltm_segment_bytes)
            try:
                yield log
            finally:
                log.close()


# Activations, the memory update's one-layer buffer, the CUDA graphs' memory pool and the allocator's
# slack, beyond the estimate below. Measured at the 8B shapes in nf4, short prompts: 1.1 GiB over the rest.
_GPU_OVERHEAD = 3 << 29
# Bytes per backbone-linear weight: nf4 packs two per byte plus an fp32 absmax per block of 64.
_LINEAR_BYTES = {"nf4": 0.5 + 4 / 64, "int8": 1.0, "none": 2.0}


def gpu_bytes_needed(cfg: MemoryConfig, quant: str) -> int:
    """GPU memory a model needs, estimated from its config: the backbone linears at `quant`; in bf16 the
    embeddings, the memory pool (an injection rewrites it in place, so there is never a second) and the
    KV cache: the memory prefix's keys and values with room for prompt and reply, plus the un-rotated
    keys an injection re-rotates. LoRA and norms are small enough to leave out."""
    from memchat.engine.engine import CACHE_HEADROOM

    h, kv, L = cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, cfg.num_layers
    attention = 2 * h * cfg.num_heads * cfg.head_dim + 2 * h * kv
    linears = L * (attention + 3 * h * cfg.intermediate_size)
    embeddings = 2 * cfg.vocab_size * h  # input embeddings and the output head, never quantized
    pool = cfg.memory_rows * L * h
    cache = (cfg.prefix_rows + CACHE_HEADROOM) * L * 2 * kv + cfg.memory_rows * L * kv
    return int(linears * _LINEAR_BYTES[quant]) + 2 * (embeddings + pool + cache) + _GPU_OVERHEAD


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def check_gpu_fits(model: str, folder: Path, device: str | None, quant: str | None) -> None:
    """Refuse before loading, saying how much is needed, when the GPU has too little free memory."""
    import torch

    if not cuda_available() or (device is not None and torch.device(device).type != "cuda"):
        return
    from memchat.engine.config import MemoryConfig
    from memchat.engine.load import LoadError
    from memchat.engine.quantize import check_mode

    where = torch.device(device or "cuda")
    mode = check_mode(quant or "nf4")
    need = gpu_bytes_needed(MemoryConfig.from_file(folder), mode)
    free = torch.cuda.mem_get_info(where)[0]
    if need > free:
        smaller = "a smaller model" if mode == "nf4" else "--quant nf4, a smaller model"
        raise LoadError(
            f"{model} needs about {need / 2**30:.1f} GiB of GPU memory with {mode} weights but {where} has "
            f"{free / 2**30:.1f} GiB free; try {smaller} (--model tiny to try memchat out) or --device cpu"
        )


# Which injection wrote which row, and where long-term rows sit in their log: bookkeeping, not memory
# (the long-term rows' values count through `ltm.rows_sha256.*`). Names, or prefixes ending in '.'.
BOOKKEEPING = ("origins", "ltm.row_ids.", "ltm.log_lengths")


def setups(journal: Journal) -> list[tuple[int, str]]:
    """(first journal row id, setup) for each setup that computed the live memory's rows, oldest first."""
    return [(int(first), setup) for first, setup in json.loads(journal.get_meta(SETUPS_KEY) or "[]")]


def memory_digest(tensors: dict) -> str:
    """sha256 of the memory state in a canonical byte form, bookkeeping left out; equal to
    `saved_digest` of the state file the same tensors were saved to."""
    from memchat.store.header import excluded
    from memchat.store.state import state_digest

    return state_digest({k: v for k, v in tensors.items() if not excluded(k, BOOKKEEPING)})


def origin_counts(origins) -> dict[int, int]:
    """Memory rows per journal row id (-1: rows from the checkpoint)."""
    return dict(Counter(int(i) for i in origins.flatten().tolist()))


def saved_digest(layout: MemoryLayout) -> str | None:
    """The digest of the saved state, from its header alone (no torch, no payload read)."""
    if not layout.state.exists():
        return None
    from memchat.store.header import read_digest

    return read_digest(layout.state, exclude=BOOKKEEPING)


def saved_meta(layout: MemoryLayout) -> dict[str, str] | None:
    """The metadata of the saved state, or None when there is none yet."""
    if not layout.state.exists():
        return None
    from memchat.store.header import read_meta

    return read_meta(layout.state)
