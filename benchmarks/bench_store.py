"""Store speed: state files against a plain file copy, replay against injection, opening a long journal.

    python benchmarks/bench_store.py                      # small state (~52 MB), 200 rows, 50k-row journal
    python benchmarks/bench_store.py --size 8b --dir /data # an 8B memory pool: 32 x 12800 x 4096 bf16, 3.4 GB

Measured in one run, so the figures compare as ratios against a baseline taken beside them:

1. `save_state` against writing the same bytes with plain open/write/fsync, os.replace and a directory
   fsync (a durable file copy from memory); `load_state` against reading the same file into a bytearray.
   Both sides fsync their writes. Reads are warm-cache: the page cache cannot be dropped without root, so
   the read figures measure copying and hashing, not the disk. Fastest of --repeats (see `paired`),
   save/plain (and load/plain) interleaved.
2. Replay against injection, on a tiny random MemoryLLM checkpoint with 16 blocks (or --model): M rows
   injected one by one through `Memory.inject` (journal append, engine update, mark applied), then a
   `forget` of the first row, which restores the checkpoint's initial memory and replays the other M-1
   rows (plus one state save), and `verify`, a full rebuild from the journal. Medians of --repeats rounds,
   each in a fresh memory home.
3. Opening a memory whose journal holds --journal-rows rows of ~300 characters (appended directly,
   marked applied, with a saved state covering them all, so opening replays nothing), against an empty
   memory: wall time of `Memory.open` + `close` and peak RSS, each in a fresh subprocess. The modules
   `Memory.open` imports lazily (torch, the engine) are imported before the timer in both cases.

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _report import print_figures

from memchat.engine.tiny import write_tiny_checkpoint
from memchat.service.memory import FORGOTTEN_KEY, Memory, Options, derive_seed, memory_layout
from memchat.store import UPTO_KEY, Journal, NewRow, load_state, save_state

MB = 1e6
SIZES = {
    # The small engine benchmark's proportions: 4 layers, 50 blocks x 64 rows, d=1024, fp32.
    "small": (4, 3200, 1024, torch.float32),
    # YuWangX/memoryllm-8b: 32 layers, 50 blocks x 256 rows, d=4096, bf16.
    "8b": (32, 12800, 4096, torch.bfloat16),
}
SEED = 1  # Options.seed: fixes the memory's seed salt, so row seeds are derive_seed(str(SEED), id)
_WORDS = (
    "the a my our this that morning evening garden kitchen train station library meeting doctor sister "
    "brother friend dog cat book letter coffee tea bread apples soup weather rain sun park beach river "
    "walked cooked wrote read called visited planned remembered bought cleaned painted fixed opened "
    "quickly slowly early late today yesterday tomorrow before after with without under over near "
    "green blue quiet busy warm cold small large new old happy tired Monday Friday June March"
)
WORDS = _WORDS.split()


# --- helpers ---------------------------------------------------------------------------------------


def options(home: Path, model: str) -> Options:
    # No periodic checkpoints: they would add state writes to the injection and replay figures.
    return Options(home=home, model=model, seed=SEED, checkpoint_every=10**9, snapshot_every=10**9)


def sentence(rng: random.Random, words: int) -> str:
    text = " ".join(rng.choices(WORDS, k=words))
    return text[0].upper() + text[1:] + "."


def write_all(fd: int, data: memoryview) -> None:
    while len(data):
        data = data[os.write(fd, data[: 1 << 30]) :]


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def plain_write(path: Path, data: memoryview) -> None:
    """The baseline: a durable file copy from memory (temp file, write, fsync, rename, directory fsync)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def plain_read(path: Path) -> bytearray:
    with open(path, "rb", buffering=0) as f:
        buffer = bytearray(os.fstat(f.fileno()).st_size)
        view = memoryview(buffer)
        while len(view):
            got = f.readinto(view)
            if not got:
                raise OSError(f"{path}: short read")
            view = view[got:]
    return buffer


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def paired(fn_a, fn_b, repeats: int) -> tuple[float, float]:
    """Fastest runs of fn_a and fn_b, run alternately after one warm-up each, so drift hits both alike.

    The fastest, not the median: on the VMs we measure on, a bare `os.write` of 52 MB into the page cache
    takes either ~0.03 s or ~0.15 s, in streaks (writeback throttling), whoever writes; a median of a few
    runs then compares which mode each side drew, not their code. The noise only ever adds time, so the
    fastest run of each is the cost of the code."""
    fn_a()
    fn_b()
    a, b = [], []
    for _ in range(repeats):
        for fn, out in ((fn_a, a), (fn_b, b)):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return min(a), min(b)


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MB if sys.platform == "darwin" else peak * 1024 / MB  # bytes on macOS, KiB on Linux


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB
    except OSError:
        return float("nan")


# --- 1. state files --------------------------------------------------------------------------------


def state_tensors(size: str) -> dict[str, torch.Tensor]:
    """A state shaped like a real memory: the pool, its origins, the initialized flag.

    Random bits (not randn) because filling 3.4 GB with normals takes longer than the benchmark; the store
    neither compresses nor looks at the values, so any bytes time the same.
    """
    layers, rows, dim, dtype = SIZES[size]
    g = torch.Generator().manual_seed(0)
    memory = torch.empty((layers, rows, dim), dtype=dtype)
    memory.view(torch.uint8).random_(0, 256, generator=g)
    origins = torch.randint(-1, 1 << 20, (layers, rows), generator=g, dtype=torch.int64)
    return {"memory": memory, "origins": origins, "initialized": torch.tensor(1, dtype=torch.uint8)}


def bench_state(size: str, folder: Path, repeats: int) -> dict:
    tensors = state_tensors(size)
    meta = {UPTO_KEY: "123", FORGOTTEN_KEY: "0", "model": "bench"}
    state_path, plain_path = folder / "state.safetensors", folder / "plain.bin"
    save_state(state_path, tensors, meta)
    # The baseline writes exactly the bytes of the state file (header included) from one buffer.
    data = memoryview(plain_read(state_path))
    nbytes = len(data)
    save_s, plain_write_s = paired(
        lambda: save_state(state_path, tensors, meta), lambda: plain_write(plain_path, data), repeats
    )
    data = None  # free the copy (3.4 GB for --size 8b) before the reads
    load_s, plain_read_s = paired(lambda: load_state(state_path), lambda: plain_read(plain_path), repeats)
    loaded = load_state(state_path)[0]["memory"]
    assert torch.equal(loaded.view(torch.uint8), tensors["memory"].view(torch.uint8)), "state round trip"
    return {
        "size": size,
        "state_mb": nbytes / MB,
        "save_s": save_s,
        "plain_write_s": plain_write_s,
        "save_over_plain": save_s / plain_write_s,
        "save_mb_s": nbytes / MB / save_s,
        "plain_write_mb_s": nbytes / MB / plain_write_s,
        "load_s": load_s,
        "plain_read_s": plain_read_s,
        "load_over_plain": load_s / plain_read_s,
        "load_mb_s": nbytes / MB / load_s,
        "plain_read_mb_s": nbytes / MB / plain_read_s,
    }


# --- 2. replay against injection -------------------------------------------------------------------


def texts(tokenize, count: int, tokens: int, seed: int = 2) -> list[str]:
    """`count` texts of generated sentences, each just over `tokens` tokens (one injection each)."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        parts: list[str] = []
        while len(tokenize(" ".join(parts))) < tokens:
            parts.append(sentence(rng, rng.randint(6, 14)))
        out.append(" ".join(parts))
    return out


def replay_round(home: Path, model: str, batch: list[str]) -> dict:
    """One fresh memory: inject `batch`, forget its first row, verify. Returns the times."""
    memory = Memory.open(options(home, model))
    try:
        start = time.perf_counter()
        ids, tokens = [], 0
        for i, text in enumerate(batch):
            result = memory.inject(text, "note", f"note-{i}")
            ids += result.ids
            tokens += result.tokens
        inject_s = time.perf_counter() - start
        assert len(ids) == len(batch), f"expected one injection per text, got {len(ids)} for {len(batch)}"

        start = time.perf_counter()
        memory.forget(memory.select()[:1])
        forget_s = time.perf_counter() - start

        start = time.perf_counter()
        live, rebuilt = memory.verify()
        verify_s = time.perf_counter() - start
        assert live == rebuilt, "verify disagrees with the live memory"
        memory_rows = memory.engine.config.memory_rows
    finally:
        memory.close()
    return {"inject_s": inject_s, "forget_s": forget_s, "verify_s": verify_s, "tokens": tokens,
            "memory_rows": memory_rows}


def bench_replay(root: Path, model: str, rows: int, repeats: int) -> dict:
    """Medians over `repeats` rounds, each in a fresh memory home."""
    memory = Memory.open(options(root / "texts", model))
    try:
        batch = texts(memory.tokenizer.encode, rows, 100)
    finally:
        memory.close()
    rounds = [replay_round(root / f"round-{r}", model, batch) for r in range(repeats)]
    inject_s, forget_s, verify_s = (statistics.median(r[k] for r in rounds)
                                    for k in ("inject_s", "forget_s", "verify_s"))
    inject_rows_s = rows / inject_s
    replay_rows_s = (rows - 1) / forget_s
    return {
        "model_memory_rows": rounds[0]["memory_rows"],
        "rows": rows,
        "tokens_per_row": rounds[0]["tokens"] / rows,
        "inject_s": inject_s,
        "inject_rows_s": inject_rows_s,
        "forget_s": forget_s,
        "replay_rows_s": replay_rows_s,
        "replay_over_inject": replay_rows_s / inject_rows_s,
        "verify_s": verify_s,
        "verify_rows_s": (rows - 1) / verify_s,
    }


# --- 3. opening a long journal ---------------------------------------------------------------------


def build_long_memory(home: Path, model: str, journal_rows: int, seed: int = 3) -> tuple[int, float]:
    """A memory with `journal_rows` applied rows and a saved state covering all of them.

    A few rows go through `Memory` (so the journal, salt and state file are real), then the long tail is
    appended straight to the journal in batches and marked applied, and the state file is re-saved with
    `journal_upto` moved to the last row. Its tensors are then not the true fold of the tail (replaying
    50k rows would take minutes); opening trusts that metadata, which is all this measures.
    Returns (journal rows, journal file MB).
    """
    head = 8
    memory = Memory.open(options(home, model))
    try:
        rng = random.Random(seed)
        for i in range(head):
            memory.inject(" ".join(sentence(rng, 12) for _ in range(8)), "note", f"head-{i}")
    finally:
        memory.close()
    layout = memory_layout(options(home, model))
    salt = str(SEED)
    with Journal(layout.journal) as journal:
        remaining, batch = journal_rows - head, 1000
        while remaining > 0:
            n = min(batch, remaining)
            new = []
            for _ in range(n):
                text = " ".join(sentence(rng, 7) for _ in range(6))[:300]
                source = f"docs/file-{rng.randrange(200)}.md"
                new.append(
                    NewRow(text=text, source_kind="file", source_name=source, token_count=len(text) // 4)
                )
            ids = journal.append(new, seed_fn=lambda row_id: derive_seed(salt, row_id))
            journal.mark_applied(ids)
            remaining -= n
        last = journal.last_id()
        forgotten = journal.forgotten_count(last)
        total = journal.counts().applied
    tensors, meta = load_state(layout.state)
    meta[UPTO_KEY], meta[FORGOTTEN_KEY] = str(last), str(forgotten)
    save_state(layout.state, {k: v.clone() for k, v in tensors.items()}, meta)
    size = sum(p.stat().st_size for p in layout.root.glob("journal.sqlite*"))
    return total, size / MB


def build_empty_memory(home: Path, model: str) -> None:
    Memory.open(options(home, model)).close()


def child_open(home: str, model: str) -> None:
    """Run in a fresh process: open and close the memory once, print the figures as JSON."""
    import memchat.engine.engine  # noqa: F401 - what Memory.open imports lazily, outside the timer
    import memchat.engine.load  # noqa: F401
    import memchat.engine.tokenizer  # noqa: F401

    rss_before = current_rss_mb()
    opts = options(Path(home), model)
    start = time.perf_counter()
    memory = Memory.open(opts)
    opened = time.perf_counter()
    assert memory.holder
    memory.close()
    closed = time.perf_counter()
    peak = peak_rss_mb()
    start_journal = time.perf_counter()
    Journal(memory_layout(opts).journal).close()
    journal_s = time.perf_counter() - start_journal
    print(
        json.dumps(
            {
                "open_s": opened - start,
                "close_s": closed - opened,
                "open_close_s": closed - start,
                "rss_before_mb": rss_before,
                "peak_rss_mb": peak,
                "journal_open_s": journal_s,
            }
        )
    )


def measure_open(home: Path, model: str, repeats: int, threads: int | None) -> dict:
    runs = []
    for _ in range(repeats):
        cmd = [sys.executable, os.path.abspath(__file__), "--child-open", str(home), model]
        if threads:
            cmd += ["--threads", str(threads)]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        process_s = time.perf_counter() - start
        if done.returncode:
            raise RuntimeError(f"child failed:\n{done.stderr}")
        runs.append({**json.loads(done.stdout.strip().splitlines()[-1]), "process_s": process_s})
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def bench_open(root: Path, model: str, journal_rows: int, repeats: int, threads: int | None) -> dict:
    long_home, empty_home = root / "long", root / "empty"
    start = time.perf_counter()
    rows, journal_mb = build_long_memory(long_home, model, journal_rows)
    build_s = time.perf_counter() - start
    build_empty_memory(empty_home, model)
    long, empty = (measure_open(home, model, repeats, threads) for home in (long_home, empty_home))
    return {
        "journal_rows": rows,
        "journal_mb": journal_mb,
        "journal_build_s": build_s,
        "open_long_s": long["open_close_s"],
        "open_empty_s": empty["open_close_s"],
        "open_long_over_empty": long["open_close_s"] / empty["open_close_s"],
        "open_long_journal_s": long["journal_open_s"],
        "open_empty_journal_s": empty["journal_open_s"],
        "open_long_peak_rss_mb": long["peak_rss_mb"],
        "open_empty_peak_rss_mb": empty["peak_rss_mb"],
        "open_long_rss_growth_mb": long["peak_rss_mb"] - long["rss_before_mb"],
        "open_empty_rss_growth_mb": empty["peak_rss_mb"] - empty["rss_before_mb"],
        "open_long_process_s": long["process_s"],
        "open_empty_process_s": empty["process_s"],
    }


# --- main ------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="small", help="state shape for part 1")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure (median)")
    parser.add_argument("--rows", type=int, default=200, help="M: rows injected, then replayed, in part 2")
    parser.add_argument("--journal-rows", type=int, default=50_000, help="journal length for part 3")
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where the temp files go (default: a fresh temp dir in the system temp folder)",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="model for parts 2 and 3 (default: a tiny random MemoryLLM with 16 blocks)",
    )
    parser.add_argument("--open-repeats", type=int, default=3, help="subprocesses per open figure")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument("--child-open", nargs=2, metavar=("HOME", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child_open:
        child_open(*args.child_open)
        return
    if args.rows < 2 or args.journal_rows < 16 or args.repeats < 1:
        parser.error("need --rows >= 2, --journal-rows >= 16, --repeats >= 1")

    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="bench-store-", dir=args.dir))
    started = time.perf_counter()
    try:
        model = args.model or str(write_tiny_checkpoint(root / "model", "memoryllm", num_blocks=16))
        figures = bench_state(args.size, root / "state", args.repeats)
        figures["threads"] = torch.get_num_threads()
        figures.update(bench_replay(root / "replay", model, args.rows, args.repeats))
        figures.update(bench_open(root / "open", model, args.journal_rows, args.open_repeats, args.threads))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    figures["total_s"] = time.perf_counter() - started
    print_figures(figures)


if __name__ == "__main__":
    main()
