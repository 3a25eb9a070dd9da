"""Fidelity check: recompute every golden output of an official-format fixture folder and compare.

    python -m memchat.engine.check FIXTURE_DIR

The folder holds a checkpoint plus golden_*.safetensors recorded by running the official code (format:
../shared/fixtures/official/README.md). Floats must agree to 1e-4 (abs + rel); token ids, kept
indices, retrieved rows and copied memory rows exactly. Exits non-zero on any miss.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from memchat.engine.config import MemoryConfig
from memchat.engine.engine import Engine
from memchat.engine.generate import Sampling, generate
from memchat.engine.load import load
from memchat.engine.model import KVCache
from memchat.engine.state import LongTermMemory, MemoryState, candidate_scores, kept_indices, retrieve, update

TOL = 1e-4


@dataclass
class Report:
    rows: list[tuple[str, float, str, bool]] = field(default_factory=list)

    def close(self, name: str, got: Tensor, want: Tensor) -> None:
        got = got.detach().cpu()
        if got.numel() == want.numel():
            got = got.reshape(want.shape)  # goldens keep the official batch dimension of 1
        ok = got.shape == want.shape and torch.allclose(got.double(), want.double(), rtol=TOL, atol=TOL)
        self.rows.append((name, _max_error(got, want), f"{TOL:g} abs+rel", ok))

    def exact(self, name: str, got: Tensor, want: Tensor) -> None:
        got = got.detach().cpu()
        same = got.shape == want.shape and torch.equal(got.to(want.dtype), want)
        self.rows.append((name, _max_error(got, want), "exact", same))

    @property
    def ok(self) -> bool:
        return all(row[3] for row in self.rows)


def _max_error(got: Tensor, want: Tensor) -> float:
    if got.shape != want.shape:
        return float("inf")
    return float((got.double() - want.double()).abs().max()) if want.numel() else 0.0


def _golden(folder: Path, name: str) -> dict[str, Tensor] | None:
    from safetensors.torch import load_file

    path = folder / f"golden_{name}.safetensors"
    return load_file(path) if path.exists() else None


def check(folder: Path) -> Report:
    torch.manual_seed(0)  # nothing below may depend on it: updates take explicit seeds
    model, state = load(folder, device="cpu", quant="none", dtype=torch.float32)
    engine = Engine(model, state)
    meta = (
        json.loads((folder / "golden_meta.json").read_text())
        if (folder / "golden_meta.json").exists()
        else {}
    )
    report = Report()
    with torch.inference_mode():
        _check_inject(engine, folder, report)
        _check_forward(engine, folder, report)
        _check_update(engine, folder, meta, report)
        _check_uninitialized(engine, folder, report)
        _check_sequence(engine, folder, meta, report)
        _check_generate(engine, folder, report)
        _check_positions(engine.config, folder, report)
    return report


def _check_inject(engine: Engine, folder: Path, report: Report) -> None:
    g = _golden(folder, "inject")
    for case in ("short", "exact", "long") if g else ():
        if f"ctx_{case}_ids" in g:
            delta = engine.model.inject(g[f"ctx_{case}_ids"], engine.state.memory.unsqueeze(1))
            report.close(f"inject {case} delta", delta.transpose(0, 1), g[f"delta_{case}"])


def _answer(
    engine: Engine,
    state: MemoryState,
    prompt: Tensor,
    report: Report | None = None,
    golden: dict[str, Tensor] | None = None,
    tag: str = "",
) -> tuple[Tensor, list[Tensor], KVCache]:
    """Answering forward over a fresh prefix, recording (and checking) M+ retrieval per layer."""
    cfg, model = engine.config, engine.model
    cache = KVCache(cfg, cfg.prefix_rows + 64, model.dtype, model.device)
    model.fill_prefix(cache, state.memory.unsqueeze(1))

    def retrieval(layer: int, queries: Tensor) -> Tensor:
        rows, picks = retrieve(cfg, state.ltm, layer, queries)
        if report is not None and golden is not None and f"{tag}layer{layer}.retrieved_rows" in golden:
            pre = f"{tag}layer{layer}."
            report.close(
                f"{tag}L{layer} scores",
                candidate_scores(state.ltm, layer, queries),
                golden[pre + "candidate_scores"],
            )
            report.exact(f"{tag}L{layer} picks", picks, golden[pre + "retrieved_flat_indices"])
            report.exact(f"{tag}L{layer} rows", rows, golden[pre + "retrieved_rows"])
        return rows

    hidden: list[Tensor] = []
    logits = model(prompt, cache, retrieve=retrieval if cfg.is_mplus else None, hidden=hidden)
    return logits, hidden, cache


def _check_forward(engine: Engine, folder: Path, report: Report) -> None:
    g = _golden(folder, "forward")
    if g is None:
        return
    logits, hidden, _ = _answer(engine, engine.state, g["prompt_ids"])
    report.close("forward logits", logits, g["logits"])
    report.close("forward hidden states", torch.cat(hidden), g["hidden_states"])


def _check_update(engine: Engine, folder: Path, meta: dict, report: Report) -> None:
    g = _golden(folder, "update")
    if g is None:
        return
    cfg = engine.config
    for step in meta.get("update", []):
        s = f"step{step['step']}."
        before = MemoryState(memory=g[s + "memory_before"], origins=engine.state.origins)
        delta = engine.model.inject(g[s + "ctx_ids"], before.memory.unsqueeze(1))[:, 0]
        report.close(f"update {step['step']} delta", delta, g[s + "delta"][0])
        kept = kept_indices(cfg, step["torch_manual_seed"])
        report.exact(f"update {step['step']} kept indices", kept, g[s + "kept_indices"])
        after = update(cfg, before, g[s + "delta"][0], kept, origin=step["step"])
        report.exact(f"update {step['step']} memory", after.memory, g[s + "memory_after"])


def _check_uninitialized(engine: Engine, folder: Path, report: Report) -> None:
    g = _golden(folder, "uninitialized")
    for case in ("short", "long") if g else ():
        fresh = MemoryState(memory=engine.state.memory, origins=engine.state.origins, initialized=False)
        delta = engine.model.inject(g[f"{case}.ctx_ids"], fresh.memory.unsqueeze(1), initialized=False)
        report.close(f"uninitialised {case} delta", delta.transpose(0, 1), g[f"{case}.delta"])
        after = update(engine.config, fresh, g[f"{case}.delta"][0], None, origin=1)
        report.exact(f"uninitialised {case} memory", after.memory, g[f"{case}.memory_after"])


def _mplus_state(cfg: MemoryConfig, g: dict[str, Tensor], pre: str, origins: Tensor) -> MemoryState:
    """An M+ state from golden tensors named `{pre}memory`, `{pre}ltm.layer0`, … (cache if present)."""
    L = cfg.num_layers

    def per_layer(name: str) -> list[Tensor]:
        return [g[f"{pre}{name}.layer{i}"] for i in range(L)]

    def cached(name: str, empty: Tensor) -> list[Tensor]:
        return list(g[pre + name]) if pre + name in g else [empty] * L

    d, h = cfg.hidden_size, cfg.selector_hidden_dim
    ltm = LongTermMemory.of_rows(
        per_layer("ltm"),
        keys=per_layer("ltm_keys"),
        ages=per_layer("ltm_ages"),
        recall_frequencies=per_layer("ltm_recall_frequencies"),
        cached_rows=cached("cached_dropped_memories", torch.zeros(0, d)),
        cached_keys=cached("cached_dropped_keys", torch.zeros(0, h)),
        cached_ages=cached("cached_dropped_memory_ages", torch.zeros(0, dtype=torch.float64)),
    )
    return MemoryState(
        memory=g[pre + "memory"], origins=origins, memory_ages=torch.stack(per_layer("memory_ages")), ltm=ltm
    )


def _compare_mplus(report: Report, tag: str, got: MemoryState, want: MemoryState) -> None:
    report.exact(f"{tag} memory", got.memory, want.memory)
    report.exact(f"{tag} memory ages", got.memory_ages, want.memory_ages)
    for layer in range(got.ltm.layers):
        report.exact(f"{tag} ltm rows L{layer}", got.ltm.live_rows(layer), want.ltm.live_rows(layer))
    for name in ("ages", "recall_frequencies", "cached_rows", "cached_ages"):
        for layer, (a, b) in enumerate(zip(getattr(got.ltm, name), getattr(want.ltm, name), strict=True)):
            report.exact(f"{tag} ltm {name} L{layer}", a, b)
    for name in ("keys", "cached_keys"):
        for layer, (a, b) in enumerate(zip(getattr(got.ltm, name), getattr(want.ltm, name), strict=True)):
            report.close(f"{tag} ltm {name} L{layer}", a, b)


def _check_sequence(engine: Engine, folder: Path, meta: dict, report: Report) -> None:
    """M+: forwards with retrieval between four updates, two of which merge into the long-term memory."""
    g = _golden(folder, "sequence")
    if g is None:
        return
    cfg = engine.config
    state = _mplus_state(cfg, g, "state0.", engine.state.origins)
    forwards = {
        0: "forward_state0.",
        1: "forward_after_step1.",
        2: "forward_after_step2.",
        4: "forward_after_step4.",
    }
    steps = meta.get("sequence", {}).get("steps", [])
    for done in range(len(steps) + 1):
        tag = forwards.get(done)
        if tag and tag + "logits" in g:
            logits, hidden, _ = _answer(engine, state, g["prompt_ids"], report, g, tag)
            report.close(f"{tag}logits", logits, g[tag + "logits"])
            report.close(f"{tag}hidden states", torch.cat(hidden), g[tag + "hidden_states"])
        if done == len(steps):
            break
        step = steps[done]
        s = f"step{step['step']}."
        delta = engine.model.inject(g[s + "ctx_ids"], state.memory.unsqueeze(1))[:, 0]
        report.close(f"{s}delta", delta, g[s + "delta"][0])
        kept = kept_indices(cfg, step["torch_manual_seed"])
        report.exact(f"{s}kept indices", kept, g[s + "kept_indices"])
        state = update(cfg, state, g[s + "delta"][0], kept, step["step"], engine.model.selector_keys)
        _compare_mplus(report, s, state, _mplus_state(cfg, g, s + "after.", state.origins))


def _check_generate(engine: Engine, folder: Path, report: Report) -> None:
    g = _golden(folder, "generate")
    if g is None:
        return
    cfg = engine.config
    if cfg.is_mplus:
        state = _mplus_state(cfg, g, "state.", engine.state.origins)
        _answer(engine, state, g["prompt_ids"], report, g, "prefill.")
    else:
        state = MemoryState(memory=g["memory"], origins=engine.state.origins)
    gen = Engine(engine.model, state)
    steps: list[Tensor] = []
    sampling = Sampling(max_new_tokens=len(g["new_token_ids"]))
    tokens = list(
        generate(
            gen.model, gen.cache(), g["prompt_ids"], sampling, retrieve=gen.retriever(), logits_out=steps
        )
    )
    report.exact("generate greedy tokens", torch.tensor(tokens), g["new_token_ids"])
    report.close("generate step logits", torch.stack(steps[: len(g["step_logits"])]), g["step_logits"])


def _check_positions(cfg: MemoryConfig, folder: Path, report: Report) -> None:
    """The prefix length P and layer-input length T our layout gives for each recorded call."""
    path = folder / "golden_positions.json"
    if not path.exists():
        return
    bos, K = int(cfg.add_bos_embedding), cfg.num_tokens
    for call, entries in json.loads(path.read_text()).items():
        entry = entries[0] if isinstance(entries, list) else entries
        if not isinstance(entry, dict) or "prefix_token_length" not in entry:
            continue
        T, P = entry["layer_input_len"][0], entry["prefix_token_length"][0]
        if call.startswith("uninitialized"):
            ours = 0
        elif "inject" in call:
            ours = min(bos + K, T - K)
        elif call in ("forward", "generate_prefill") or call.startswith("forward_"):
            ours = cfg.prefix_rows
        else:
            continue
        report.exact(f"positions {call} P", torch.tensor(ours), torch.tensor(P))


def _print(report: Report, folder: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"fidelity check: {folder}")
    for col in ("check", "max abs error", "tolerance", ""):
        table.add_column(col)
    for name, err, tol, ok in report.rows:
        table.add_row(name, f"{err:.3g}", tol, "[green]ok[/]" if ok else "[bold red]MISS[/]")
    console = Console()
    console.print(table)
    misses = sum(not row[3] for row in report.rows)
    console.print(
        f"{len(report.rows)} checks, {misses} missed" if misses else f"{len(report.rows)} checks, all ok"
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m memchat.engine.check FIXTURE_DIR", file=sys.stderr)
        return 2
    folder = Path(args[0])
    if not (folder / "config.json").exists():
        print(f"error: {folder} is not a checkpoint folder (no config.json)", file=sys.stderr)
        return 2
    report = check(folder)
    _print(report, folder)
    return 0 if report.ok and report.rows else 1


if __name__ == "__main__":
    sys.exit(main())
