"""The memory state of a model and the rules that update it, kept apart from the weights.

Every update is a pure function of (state, delta memory, seed): drop indices come from a private
generator seeded per injection, never from the global RNG, so replaying a journal of injections with
their seeds rebuilds the same state bit for bit. The state exports to a flat dict of tensors.

M+ long-term rows live in an append-only row log (`memchat.engine.rowlog`) and a state holds their ids:
an update may append to the log, but never changes what an earlier state reads, so updates stay pure
functions of their inputs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from memchat.engine.config import MemoryConfig
from memchat.engine.rowlog import RamRowLog, RowLog

CHECKPOINT_ORIGIN = -1  # origin of memory rows that came with the checkpoint


@dataclass
class LongTermMemory:
    """M+ long-term memory, per layer: the ids of its rows in a row log, their retrieval keys, ages and
    recall frequencies, plus the rows dropped from the short-term memory since the last merge (the cache),
    with keys and ages. The cache is small and stays here until a merge appends it to the log."""

    log: RowLog
    row_ids: list[Tensor]  # int64, ascending: merges append rows last and pruning keeps the order
    keys: list[Tensor]
    ages: list[Tensor]  # float64, like the official numpy arrays
    recall_frequencies: list[Tensor]  # float64
    cached_rows: list[Tensor]
    cached_keys: list[Tensor]
    cached_ages: list[Tensor]
    log_lengths: list[int]  # the log prefix this memory was built over; restoring it cuts the log back here
    update_step: int = 0

    @classmethod
    def of_rows(cls, rows: list[Tensor], log: RowLog | None = None, **fields) -> LongTermMemory:
        """A long-term memory holding `rows` (per layer), appended to `log` (a new in-RAM log by default)."""
        log = RamRowLog() if log is None else log
        row_ids = [log.append(layer, r) for layer, r in enumerate(rows)]
        return cls(log=log, row_ids=row_ids, log_lengths=_lengths(log, len(rows)), **fields)

    @property
    def layers(self) -> int:
        return len(self.row_ids)

    def live_rows(self, layer: int) -> Tensor:
        """Every long-term row of a layer, read from the log (checks and tests; retrieval reads k)."""
        return self.log.read(layer, self.row_ids[layer])

    def rows_sha256(self, layer: int) -> Tensor:
        """sha256 over the per-row hashes of the layer's rows in order: their values, without reading them."""
        hashes = self.log.hashes(layer, self.row_ids[layer]).numpy().tobytes()
        return torch.frombuffer(bytearray(hashlib.sha256(hashes).digest()), dtype=torch.uint8)


class LogMismatch(ValueError):
    """A saved state names long-term rows its row log does not hold (cut short, damaged or replaced)."""


def _lengths(log: RowLog, layers: int) -> list[int]:
    return [log.length(layer) for layer in range(layers)]


@dataclass
class MemoryState:
    memory: Tensor  # [L, N, d]: the memory pool (M+: the short-term memory)
    origins: Tensor  # [L, N] int64: the injection (journal row) that wrote each memory row
    initialized: bool = True
    memory_ages: Tensor | None = None  # M+ [L, N] float64: age of each short-term row
    ltm: LongTermMemory | None = None

    def clone(self) -> MemoryState:
        """A copy that outlives the engine's next injection, which rewrites the pool in place (all else an
        update replaces)."""
        return replace(self, memory=self.memory.clone())

    @property
    def last_injection(self) -> int:
        """The origin of the newest memory rows: every update appends its rows last. 0 before any."""
        return max(0, int(self.origins[0, -1]))

    def to_tensors(self) -> dict[str, Tensor]:
        """Everything to restore this state over the same row log. For M+ that is the ids of the
        long-term rows, not their values, with the log lengths it was built over (`ltm.row_ids.*` and
        `ltm.log_lengths`: where the rows sit) and a sha256 of each layer's rows (what they are)."""
        out = {
            "memory": self.memory,
            "origins": self.origins,
            "initialized": torch.tensor(int(self.initialized), dtype=torch.uint8),
        }
        if self.memory_ages is not None:
            out["memory_ages"] = self.memory_ages
        if self.ltm is not None:
            for name in _LTM_LISTS:
                for layer, t in enumerate(getattr(self.ltm, name)):
                    out[f"ltm.{name}.{layer}"] = t
            for layer in range(self.ltm.layers):
                out[f"ltm.rows_sha256.{layer}"] = self.ltm.rows_sha256(layer)
            out["ltm.log_lengths"] = torch.tensor(self.ltm.log_lengths, dtype=torch.int64)
            out["ltm.update_step"] = torch.tensor(self.ltm.update_step, dtype=torch.int64)
        return out

    @classmethod
    def from_tensors(cls, t: dict[str, Tensor], log: RowLog | None = None) -> MemoryState:
        """The state `to_tensors` exported; an M+ state needs the row log its ids point into, and raises
        LogMismatch unless that log holds its rows with the values they had."""
        ltm = None
        if "ltm.update_step" in t:
            if log is None:
                raise ValueError("an M+ state needs the row log its long-term row ids point into")
            if "ltm.log_lengths" not in t:
                raise LogMismatch("the state holds its long-term rows itself (saved by an older memchat)")
            layers = t["memory"].shape[0]
            lists = {name: [t[f"ltm.{name}.{i}"] for i in range(layers)] for name in _LTM_LISTS}
            lengths = t["ltm.log_lengths"].tolist()
            ltm = LongTermMemory(log=log, **lists, log_lengths=lengths, update_step=int(t["ltm.update_step"]))
            _check_log(ltm, [t[f"ltm.rows_sha256.{i}"] for i in range(layers)])
        return cls(
            memory=t["memory"],
            origins=t["origins"],
            initialized=bool(int(t["initialized"])),
            memory_ages=t.get("memory_ages"),
            ltm=ltm,
        )


_LTM_LISTS = ("row_ids", "keys", "ages", "recall_frequencies", "cached_rows", "cached_keys", "cached_ages")


def _check_log(ltm: LongTermMemory, rows_sha256: list[Tensor]) -> None:
    for layer, (ids, want) in enumerate(zip(ltm.row_ids, rows_sha256, strict=True)):
        if ltm.log.length(layer) < ltm.log_lengths[layer] or not ltm.log.has(layer, ids):
            raise LogMismatch(f"the long-term memory of layer {layer} lacks rows this state needs")
        if not torch.equal(ltm.rows_sha256(layer), want):
            raise LogMismatch(f"the long-term rows of layer {layer} differ from those this state saved")


def initial_state(cfg: MemoryConfig, tensors: dict[str, Tensor], log: RowLog | None = None) -> MemoryState:
    """The state a checkpoint ships: its memory pool and, for M+, its long-term memory, whose rows are
    appended to `log` (empty, or a new in-RAM log by default)."""
    memory = tensors["memory"]
    L, N = memory.shape[:2]
    origins = torch.full((L, N), CHECKPOINT_ORIGIN, dtype=torch.int64)
    if not cfg.is_mplus:
        initialized = bool(int(tensors["initialized"])) if "initialized" in tensors else True
        return MemoryState(memory=memory, origins=origins, initialized=initialized)
    ltm = LongTermMemory.of_rows(
        [tensors[f"ltm.{i}"] for i in range(L)],
        log,
        keys=[tensors[f"ltm_keys.{i}"] for i in range(L)],
        # Loading truncates float ages to integers, as the official put_ltm_to_numpy does.
        ages=[tensors[f"ltm_ages.{i}"].int().double() for i in range(L)],
        recall_frequencies=[tensors[f"ltm_recall_frequencies.{i}"].double() for i in range(L)],
        cached_rows=[torch.zeros(0, memory.shape[2], dtype=memory.dtype) for _ in range(L)],
        cached_keys=[torch.zeros(0, cfg.selector_hidden_dim, dtype=memory.dtype) for _ in range(L)],
        cached_ages=[torch.zeros(0, dtype=torch.float64) for _ in range(L)],
    )
    ages = torch.zeros(L, N, dtype=torch.float64)  # not in the checkpoint: zero after loading
    return MemoryState(memory=memory, origins=origins, memory_ages=ages, ltm=ltm)


def drop_permutations(cfg: MemoryConfig, seed: int) -> Tensor:
    """One randperm(N) per layer, or one for all layers, from a generator seeded for this update.

    The generator reproduces the official global-RNG draws after `torch.manual_seed(seed)`.
    """
    N = cfg.memory_rows
    g = torch.Generator().manual_seed(seed)
    if cfg.drop_memory_per_layer:
        return torch.stack([torch.randperm(N, generator=g) for _ in range(cfg.num_layers)])
    return torch.randperm(N, generator=g).expand(cfg.num_layers, N)


def kept_indices(cfg: MemoryConfig, seed: int) -> Tensor:
    """[L, N - drop] ascending indices of the memory rows an update keeps."""
    return drop_permutations(cfg, seed)[:, : cfg.memory_rows - cfg.drop_count].sort(dim=1).values


def update(
    cfg: MemoryConfig,
    state: MemoryState,
    delta: Tensor,
    kept: Tensor,
    origin: int,
    selector_keys: Callable[[int, Tensor], Tensor] | None = None,
    in_place: bool = False,
) -> MemoryState:
    """The state after writing `delta` [L, m, d]: [memory[kept] ; delta] per layer.

    An uninitialised memory is filled by tiling the delta instead. For M+, the dropped rows go to the
    long-term memory's cache with their ages and keys (`selector_keys(layer, rows)`), and the cache is
    merged every `update_ltm_frequency` updates. `in_place` rewrites the old state's pool (see
    `rewrite_pool`): the old state is gone.
    """
    if not state.initialized:
        return _first_update(cfg, state, delta, origin)
    new = state
    if cfg.is_mplus:  # reads the rows about to be dropped, so before the pool is rewritten
        assert selector_keys is not None, "an M+ update needs the selector's key projection"
        new = _mplus_update(cfg, state, kept, selector_keys)
    origins = keep_and_append(state.origins, kept, torch.full(delta.shape[:2], origin, dtype=torch.int64))
    delta = delta.to(state.memory.dtype)
    # Last, once nothing else can fail: rewritten in place, the pool cannot go back.
    memory = (rewrite_pool if in_place else keep_and_append)(state.memory, kept, delta)
    return replace(new, memory=memory, origins=origins)


def rewrite_pool(pool: Tensor, kept: Tensor, new: Tensor) -> Tensor:
    """`keep_and_append` of one memory [L, N, d] written over `pool` itself, for the engine, which
    keeps one pool: on an 8B model's GPU a second is 3.4 GB, the margin of a 16 GB card.

    One layer's kept rows are gathered into a buffer allocated up front, so once the first layer is
    written nothing can fail half-way but a signal; the caller holds Ctrl-C meanwhile.
    """
    m = kept.shape[1]
    index = kept.to(pool.device)
    kept_rows = pool.new_empty((m, pool.shape[2]))
    for layer in range(pool.shape[0]):
        torch.index_select(pool[layer], 0, index[layer], out=kept_rows)
        pool[layer, :m] = kept_rows
        pool[layer, m:] = new[layer]
    return pool


def keep_and_append(rows: Tensor, kept: Tensor, new: Tensor) -> Tensor:
    """The memory update rule, [rows[kept] ; new] along the row axis, for every layer at once.

    rows [L, N, d] with kept [L, N - K] and new [L, K, d] (one memory), or with a batch axis after the
    layer axis, rows [L, B, N, d], kept [L, B, N - K], new [L, B, K, d] (one kept set per episode, as
    training draws them). A trailing d may be absent (the origins). Differentiable in rows and new.

    Written layer by layer into the result, so that beside the two pools only one layer's kept rows
    exist at a time (gathering every layer first, then concatenating, held a third).
    """
    axis = kept.dim() - 1
    m, k = kept.shape[axis], new.shape[axis]
    out = rows.new_empty((*rows.shape[:axis], m + k, *rows.shape[axis + 1 :]))
    for layer in range(rows.shape[0]):
        out[layer].narrow(axis - 1, 0, m).copy_(_gather_rows(rows[layer], kept[layer]))
        out[layer].narrow(axis - 1, m, k).copy_(new[layer])
    return out


def _gather_rows(x: Tensor, kept: Tensor) -> Tensor:
    index = kept.to(x.device)
    if x.dim() == kept.dim() + 1:
        index = index[..., None].expand(*index.shape, x.shape[-1])
    return torch.gather(x, kept.dim() - 1, index)


def _first_update(cfg: MemoryConfig, state: MemoryState, delta: Tensor, origin: int) -> MemoryState:
    """Tile the first delta over the pool: floor(N/r) copies, then its last N mod r rows."""
    N, r = cfg.memory_rows, delta.shape[1]
    if r < N:
        memory = torch.cat([delta] * (N // r) + ([delta[:, r - N % r :]] if N % r else []), dim=1)
    else:
        memory = delta[:, -N:]
    origins = torch.full(state.origins.shape, origin, dtype=torch.int64)
    return replace(
        state, memory=memory.to(state.memory.dtype).contiguous(), origins=origins, initialized=True
    )


def _mplus_update(
    cfg: MemoryConfig, old: MemoryState, kept: Tensor, selector_keys: Callable[[int, Tensor], Tensor]
) -> MemoryState:
    """`old` with its M+ parts updated: short-term ages and the long-term memory (its pool unchanged)."""
    K, N = cfg.num_tokens, cfg.memory_rows
    ltm = old.ltm
    dropped = _dropped_indices(kept, N)
    fresh_ages = torch.arange(K - 1, -1, -1, dtype=torch.float64).expand(cfg.num_layers, K)
    memory_ages = torch.cat([_gather_rows(old.memory_ages, kept), fresh_ages], dim=1)
    rows, keys, ages = [], [], []
    for layer in range(cfg.num_layers):
        lost = old.memory[layer][dropped[layer].to(old.memory.device)]
        lost_keys = selector_keys(layer, lost).detach().to("cpu", ltm.cached_keys[layer].dtype)
        rows.append(
            torch.cat([ltm.cached_rows[layer], lost.detach().to("cpu", ltm.cached_rows[layer].dtype)])
        )
        keys.append(torch.cat([ltm.cached_keys[layer], lost_keys]))
        # Everything already in the long-term memory or its cache ages by K; the rows just dropped keep
        # the age they had in the short-term memory.
        ages.append(torch.cat([ltm.cached_ages[layer] + K, old.memory_ages[layer][dropped[layer]]]))
    ltm = replace(
        ltm,
        ages=[a + K for a in ltm.ages],
        cached_rows=rows,
        cached_keys=keys,
        cached_ages=ages,
        update_step=ltm.update_step + K,
    )
    if ltm.update_step >= cfg.update_ltm_frequency * K:
        ltm = merge_cache(cfg, ltm)
    return replace(old, memory_ages=memory_ages, ltm=ltm)


def _dropped_indices(kept: Tensor, N: int) -> Tensor:
    is_kept = torch.zeros(kept.shape[0], N, dtype=torch.bool)
    is_kept.scatter_(1, kept, True)
    return torch.stack([torch.nonzero(~row).flatten() for row in is_kept])


def merge_cache(cfg: MemoryConfig, ltm: LongTermMemory) -> LongTermMemory:
    """Move the cached dropped rows into the long-term memory (appending them to the log); then every
    recall frequency counts down once, and rows that reached zero are pruned (their ids dropped; the log
    keeps the values for older states) unless that would leave no more than k rows."""
    out = {name: [] for name in ("row_ids", "keys", "ages", "recall_frequencies")}
    for layer in range(ltm.layers):
        ids = torch.cat([ltm.row_ids[layer], ltm.log.append(layer, ltm.cached_rows[layer])])
        keys = torch.cat([ltm.keys[layer], ltm.cached_keys[layer]])
        ages = torch.cat([ltm.ages[layer], ltm.cached_ages[layer]])
        fresh = torch.full(
            (ltm.cached_rows[layer].shape[0],), cfg.initial_rf_when_moving_stm_to_ltm, dtype=torch.float64
        )
        rf = torch.cat([ltm.recall_frequencies[layer], fresh]) - cfg.decay_frequency
        alive = torch.nonzero(rf > 0.01).flatten()
        if len(alive) > cfg.ltm_rows_retrieved:
            ids, keys, ages, rf = ids[alive], keys[alive], ages[alive], rf[alive]
        else:
            rf = rf + cfg.decay_frequency
        for name, value in zip(out, (ids, keys, ages, rf), strict=True):
            out[name].append(value)
    return LongTermMemory(
        log=ltm.log,
        **out,
        cached_rows=[r[:0] for r in ltm.cached_rows],
        cached_keys=[k[:0] for k in ltm.cached_keys],
        cached_ages=[a[:0] for a in ltm.cached_ages],
        log_lengths=_lengths(ltm.log, ltm.layers),
        update_step=0,
    )


def pruned_row_ids(old: LongTermMemory, new: LongTermMemory) -> list[Tensor]:
    """Per layer, the ids of the rows an update pruned: held by `old` or appended by the update, and not
    held by `new`. Assumes no other state appends to the log meanwhile."""
    if new.row_ids is old.row_ids:  # no merge: the id lists are shared
        return [ids[:0] for ids in old.row_ids]
    pruned = []
    for layer, (held, kept) in enumerate(zip(old.row_ids, new.row_ids, strict=True)):
        held = torch.cat([held, torch.arange(old.log_lengths[layer], new.log_lengths[layer])])
        pruned.append(held[~torch.isin(held, kept)])
    return pruned


def candidate_scores(ltm: LongTermMemory, layer: int, queries: Tensor) -> Tensor:
    """Mean over the prompt rows of sigmoid(query · key), for the long-term rows and then the cache."""

    def score(keys: Tensor) -> Tensor:
        return torch.sigmoid(queries @ keys.to(queries.device, queries.dtype).T).mean(dim=0)

    return torch.cat([score(ltm.keys[layer]), score(ltm.cached_keys[layer])])


def retrieve(cfg: MemoryConfig, ltm: LongTermMemory, layer: int, queries: Tensor) -> tuple[Tensor, Tensor]:
    """The k long-term rows for one layer's prompt rows [n, h]: top-k candidates by score, in ascending
    index order, then oldest first.

    Returns the rows [k, d] in prefix order and their candidate indices (cache rows numbered after the
    long-term rows). Ties in age put the later candidate first, as the official numpy argsort does on
    small arrays.
    """
    k = cfg.ltm_rows_retrieved
    ids = ltm.row_ids[layer]
    stored = len(ids)
    if stored < k:
        # Too few rows to choose from: take them cyclically, ignoring the cache.
        picks = torch.arange(stored).repeat(-(-k // stored))[-k:]
    else:
        picks = torch.topk(candidate_scores(ltm, layer, queries), k).indices.sort().values.cpu()
    ages = _pick(stored, ltm.ages[layer].__getitem__, ltm.cached_ages[layer], picks)
    picks = picks[torch.argsort(ages, stable=True).flip(0)]
    rows = _pick(stored, lambda at: ltm.log.read(layer, ids[at]), ltm.cached_rows[layer], picks)
    return rows, picks


def _pick(stored: int, stored_at: Callable[[Tensor], Tensor], cached: Tensor, picks: Tensor) -> Tensor:
    """Entries of [long-term ; cached] at `picks`, reading only the picked long-term entries."""
    in_stored = picks < stored
    out = cached.new_empty((len(picks), *cached.shape[1:]))
    out[in_stored] = stored_at(picks[in_stored]).to(out.dtype)
    out[~in_stored] = cached[picks[~in_stored] - stored]
    return out
