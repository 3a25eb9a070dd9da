"""Engine speed at full memory, with random weights in the shapes of a real model.

    python benchmarks/bench_engine.py --config small --device cpu
    python benchmarks/bench_engine.py --config 8b --device cuda          # memoryllm-8b shapes, nf4

Measured in one run, so the figures compare as ratios: time to first token (TTFT) of a 32-token
question through the same layers with no memory prefix, at full memory with the cached prefix, and at
full memory recomputing the prefix for every question (what the official code does); decode tokens/s
at full memory; injection tokens/s; peak GPU memory. On CUDA the answering forwards replay CUDA graphs, as
the engine's do; `--eager` runs them without, for a baseline. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _report import print_figures, sync

from memchat.engine.config import MemoryConfig
from memchat.engine.engine import Engine
from memchat.engine.generate import CudaGraphs, Sampling, answer, generate
from memchat.engine.load import build_model, populate
from memchat.engine.model import KVCache
from memchat.engine.quantize import check_mode, default_mode

LORA = {
    "r": 8,
    "lora_alpha": 32,
    "target_modules": ["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj"],
}
CONFIGS = {
    # The 8B model's proportions at a size a CPU runs in seconds.
    "small": dict(
        num_hidden_layers=4,
        hidden_size=1024,
        num_attention_heads=16,
        num_key_value_heads=4,
        intermediate_size=3584,
        vocab_size=32000,
        num_tokens=64,
        num_blocks=50,
    ),
    # YuWangX/memoryllm-8b: Llama-3-8B with 50 blocks of 256 memory rows per layer.
    "8b": dict(
        num_hidden_layers=32,
        hidden_size=4096,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=14336,
        vocab_size=128256,
        num_tokens=256,
        num_blocks=50,
        rope_scaling={"type": "linear", "factor": 1.8125},
    ),
}


def make_config(name: str) -> MemoryConfig:
    return MemoryConfig.from_dict(
        {
            "model_type": "llama",
            "architectures": ["MemoryLLM"],
            "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0,
            "max_position_embeddings": 8192,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "add_bos_embedding": True,
            "drop_memory_per_layer": True,
            "add_decoder_lora": True,
            "lora_config": LORA,
            **CONFIGS[name],
        }
    )


def random_engine(cfg: MemoryConfig, device: torch.device, quant: str, dtype: torch.dtype) -> Engine:
    """An engine with random weights, built tensor by tensor through the loader's own path."""
    model = build_model(cfg)
    g = torch.Generator(device=device).manual_seed(0)
    shapes = {name: t.shape for name, t in model.state_dict().items()}
    shapes["memory"] = torch.Size((cfg.num_layers, cfg.memory_rows, cfg.hidden_size))

    def tensors():
        for name, shape in shapes.items():
            fan_in = shape[-1] if len(shape) > 1 else 1
            yield name, torch.randn(shape, generator=g, device=device, dtype=dtype) / fan_in**0.5
        yield "initialized", torch.tensor(1, dtype=torch.uint8)

    state = populate(model, tensors(), quant, dtype, device)
    return Engine(model, state)


def timed(cases: dict, device: torch.device, repeats: int) -> dict[str, float]:
    """Median wall time of each case. Cases run interleaved, round after round, so a change in machine
    load over the run hits all of them alike and the ratios between them stay fair."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in cases.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


@torch.inference_mode()
def run(
    config: str, device: torch.device, quant: str, repeats: int, graphed: bool, question_len: int = 32
) -> dict:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = make_config(config)
    engine = random_engine(cfg, device, quant, dtype)
    model = engine.model
    g = torch.Generator().manual_seed(1)
    question = torch.randint(3, cfg.vocab_size, (1, question_len), generator=g).to(device)
    context = torch.randint(3, cfg.vocab_size, (1, cfg.max_injection_tokens), generator=g).to(device)

    empty, cache = KVCache(cfg, question_len + 1, model.dtype, device), engine.cache()
    empty_graphs, cache_graphs = (CudaGraphs(model, c) if graphed else None for c in (empty, cache))

    def first_token(c: KVCache, graphs: CudaGraphs | None) -> None:
        c.reset()
        answer(model, c, question, graphs).argmax()

    def first_token_no_memory():
        first_token(empty, empty_graphs)

    def first_token_cached():
        first_token(cache, cache_graphs)

    def first_token_recompute():
        model.fill_prefix(cache, engine.state.memory.unsqueeze(1))
        first_token(cache, cache_graphs)

    decode_tokens = 32
    never_stop = Sampling(max_new_tokens=decode_tokens)

    def decode():
        # No stop ids: random weights may well emit the eos id.
        tokens = generate(model, cache, question.cpu(), never_stop, graphs=cache_graphs)
        produced = sum(1 for _ in tokens)
        assert produced == decode_tokens

    def inject():
        engine.inject(context, seed=7)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    measured = timed(
        {
            "ttft_nomem_s": first_token_no_memory,
            "ttft_full_cached_s": first_token_cached,
            "ttft_full_recompute_s": first_token_recompute,
            "decode": decode,
            "inject": inject,
        },
        device,
        repeats,
    )
    figures = {
        "config": config,
        "device": str(device),
        "quant": quant,
        "cuda_graphs": graphed,
        "memory_rows": cfg.memory_rows,
        "layers": cfg.num_layers,
        "question_tokens": question_len,
        **{k: v for k, v in measured.items() if k.startswith("ttft")},
        # Generation time minus its own prefill is the decode time of the new tokens.
        "decode_tok_s": (decode_tokens - 1) / max(1e-9, measured["decode"] - measured["ttft_full_cached_s"]),
        "inject_tok_s": context.shape[1] / measured["inject"],
    }
    if device.type == "cuda":
        figures["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
    figures["cached_over_nomem"] = figures["ttft_full_cached_s"] / figures["ttft_nomem_s"]
    figures["recompute_over_cached"] = figures["ttft_full_recompute_s"] / figures["ttft_full_cached_s"]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", choices=sorted(CONFIGS), default="small")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quant", default=None, help="nf4, int8 or none (default: nf4 on CUDA, none on CPU)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--eager", action="store_true", help="on CUDA, run forwards without CUDA graphs")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    quant = check_mode(args.quant or default_mode(device))
    figures = run(args.config, device, quant, args.repeats, device.type == "cuda" and not args.eager)
    print_figures(figures)


if __name__ == "__main__":
    main()
