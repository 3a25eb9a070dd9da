"""Tiny random checkpoints in the official MemoryLLM / M+ on-disk format.

The product's tests and the CLI's `tiny` presets load these folders through the same code path a hub
download takes, so a folder must look exactly like a hub checkpoint: config.json and
generation_config.json in the style `save_pretrained` writes, safetensors weights (one file, or shards
with an index) under the official key names, and a real tokenizer that transformers can load.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

KINDS = ("memoryllm", "mplus", "memoryllm-7b")

VOCAB_SIZE = 512
# Special tokens come first in training, so they get ids 0, 1, 2, ...: bos 1 and eos/pad 2 in both styles,
# as in the official fixtures. Llama-3 has no <unk>; a reserved token holds id 0 so the ids line up.
LLAMA3_SPECIALS = (
    "<|reserved_special_token_0|>",
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
)
LLAMA2_SPECIALS = ("<unk>", "<s>", "</s>")
BOS_ID, EOS_ID, EOT_ID = 1, 2, 5
# transformers' "no limit" sentinel, which the Llama-2 and Llama-3 tokenizer configs carry.
_UNBOUNDED = int(1e30)
# How Llama-3's tokenizer splits text into words before BPE (its tokenizer.json's Split pattern).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{ (message['content'] | trim) + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

# Training text for the tokenizer: everyday chat, written for this module.
_CORPUS = """\
Hello! How are you today? I am fine, thank you. What about you?
Good morning. Did you sleep well last night? I slept quite well, thanks for asking.
Can you help me plan my week? Sure, let us start with Monday and see what you need to get done.
I have a meeting at nine and a dentist appointment at three in the afternoon.
Please remind me to call my sister on Friday evening. She is moving to a new apartment.
My favorite color is green, and I really like walking in the park when the weather is nice.
What is the weather like where you are? It is sunny and warm, but it might rain later.
I would like a cup of coffee with a little milk and no sugar, please.
Do you remember what I told you yesterday? You said your dog is called Biscuit and loves the beach.
That is right! He is three years old and he chases every ball he sees.
Could you write a short note for my neighbor? I want to thank her for watering the plants.
Of course. Here is a short note: Thank you so much for looking after my plants while I was away.
Where did I put my keys? You mentioned that you usually leave them on the table by the door.
I am learning to cook. Last week I made soup, bread and a simple salad with tomatoes.
Tell me a fun fact. Octopuses have three hearts and blue blood.
How long does it take to boil an egg? About seven to nine minutes for a firm yolk.
My birthday is in June. I want to invite a few friends for dinner and play some board games.
Let me know if you need anything else. I am always happy to help.
Thanks, that was very helpful. Have a nice day!
I started reading a new book about the history of the sea and the people who sailed it.
The train leaves at half past eight, so we should get to the station a little early.
Do not forget to buy eggs, butter, flour, apples and a bottle of water on the way home.
My brother works as a nurse at the city hospital and often has night shifts.
We are going hiking this weekend if the weather stays good. Do you want to join us?
I think the answer is yes, but let me check my calendar first.
Please summarize what we talked about. We talked about your week, your dog and your birthday dinner.
Why is the sky blue? Sunlight scatters off the air, and blue light scatters the most.
I need to write an email to my manager about taking a few days off next month.
What time is it in Tokyo right now? It is about nine hours ahead of London.
The children played in the garden all afternoon and came back tired and happy.
Sorry, I did not understand. Could you say that again in a different way?
No problem. I asked whether you prefer tea or coffee in the morning.
Tea, usually. Green tea with a slice of lemon is my favorite.
I will be at the library until five, then I am going to the gym for an hour.
Remember that my password hint is the name of my first cat, but never tell anyone.
Can we talk about something else? I am a bit tired of thinking about work.
Sure. Would you like to hear a story, a joke or a little poem?
A joke, please. Why did the bicycle fall over? Because it was two tired.
That is a good one! Tell me another one tomorrow.
Our team finished the project on time, and the client was very pleased with the results.
I moved to a small town near the mountains two years ago, and I love the quiet mornings.
How many cups are in a liter? A liter is a little more than four cups.
Numbers like 1, 2, 3, 10, 42, 100 and 2024 appear in dates, prices and phone numbers.
The meeting is on 12 March at 10:30, in room 4B on the second floor.
It costs $15.99, or about 14 euros, and shipping is free for orders over $50.
"Where are you going?" she asked. "To the market," he said, "and then home."
Note to self: water the plants, pay the bills, and answer the messages from Anna and Tom.
First, open the settings. Second, choose your language. Third, press save and restart.
Yes. No. Maybe. Okay! Great... Really? Of course; why not? Well, let me think about it.
"""


def write_tiny_checkpoint(
    folder: Path, kind: str = "memoryllm", *, seed: int = 0, shards: int = 1, **config_overrides: Any
) -> Path:
    """Write a complete random checkpoint folder of `kind`, byte-identical for the same arguments.

    `config_overrides` replace config.json fields (unknown names are refused, to catch typos); tensor
    shapes and derived fields (head_dim, num_memory_tokens, selector_layers, ...) follow them.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    llama2_style = kind == "memoryllm-7b"
    tiny_tokenizer(folder, llama2_style=llama2_style)
    vocab = _tokenizer(llama2_style).get_vocab_size(with_added_tokens=True)
    config = checkpoint_config(kind, vocab, **config_overrides)
    write_checkpoint(folder, config, _weights(config, seed), generation_config(config, chat=not llama2_style),
                     shards)
    return folder


def write_checkpoint(
    folder: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor], generation: dict[str, Any],
    shards: int = 1,
) -> None:
    """config.json, generation_config.json and the safetensors weights (official key names) of a checkpoint;
    the tokenizer files are written apart (`tiny_tokenizer`, `write_tokenizer`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "config.json", config)
    _write_json(folder / "generation_config.json", generation)
    _write_weights(folder, tensors, shards)


def tiny_tokenizer(folder: Path, *, llama2_style: bool = False) -> None:
    """Write a real byte-level BPE tokenizer (Llama-3 chat conventions, or Llama-2's) into `folder`."""
    write_tokenizer(folder, _tokenizer_json(llama2_style), llama2_style=llama2_style)


def write_tokenizer(folder: Path, tokenizer_json: str, *, llama2_style: bool = False) -> None:
    """Write a tokenizer (the JSON of a `train_tokenizer` result) with its transformers config files:
    special tokens, and for the Llama-3 style the chat template."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    specials = LLAMA2_SPECIALS if llama2_style else LLAMA3_SPECIALS
    bos, eos = specials[BOS_ID], specials[EOS_ID]
    (folder / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    special_map = {"bos_token": bos, "eos_token": eos, "pad_token": eos}
    if llama2_style:
        special_map["unk_token"] = specials[0]
    tok_config: dict[str, Any] = {
        **special_map,
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {str(i): _added_token(t) for i, t in enumerate(specials)},
        # Cleaning spaces would break the exact round trip of arbitrary text.
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": _UNBOUNDED,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    if not llama2_style:
        tok_config["chat_template"] = LLAMA3_CHAT_TEMPLATE
    _write_json(folder / "tokenizer_config.json", tok_config)
    _write_json(folder / "special_tokens_map.json", special_map)


# --- tokenizer -------------------------------------------------------------------------------------


@functools.cache
def _tokenizer(llama2_style: bool) -> Tokenizer:
    # Trained once per process and style: tests write many checkpoints, and all share the same files.
    return train_tokenizer(_CORPUS.splitlines(), VOCAB_SIZE, llama2_style=llama2_style)


def train_tokenizer(
    corpus: Iterable[str], vocab_size: int, *, llama2_style: bool = False, llama3_split: bool = False
) -> Tokenizer:
    """A byte-level BPE tokenizer trained on `corpus` (lines of text): every UTF-8 string round-trips,
    special tokens take ids 0, 1, 2, ... (bos 1, eos 2), and encoding adds bos as Llama does.
    `llama3_split`: words are split as Llama-3's tokenizer splits them (a run of newlines is one piece),
    rather than as GPT-2's."""
    specials = LLAMA2_SPECIALS if llama2_style else LLAMA3_SPECIALS
    tok = Tokenizer(models.BPE())
    if llama3_split:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials),
        # The full byte alphabet makes every UTF-8 string encodable, whatever the corpus holds.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    bos = specials[BOS_ID]
    # Like Llama-2/3, encoding adds bos; apply_chat_template encodes without it, as its template has one.
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1", special_tokens=[(bos, BOS_ID)]
        ),
    ])
    return tok


@functools.cache
def _tokenizer_json(llama2_style: bool) -> str:
    return _tokenizer(llama2_style).to_str(pretty=True)


def _added_token(content: str) -> dict[str, Any]:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": True}


# --- config ----------------------------------------------------------------------------------------

_LLAMA_BASE: dict[str, Any] = {
    "add_bos_embedding": True,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": BOS_ID,
    "eos_token_id": EOS_ID,
    "hidden_act": "silu",
    "hidden_size": 64,
    "initializer_range": 0.02,
    "intermediate_size": 128,
    "mlp_bias": False,
    "num_attention_heads": 4,
    "num_blocks": 4,
    "num_hidden_layers": 2,
    "num_tokens": 8,
    "pad_token_id": EOS_ID,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "use_cache": True,
}

_MEMORYLLM: dict[str, Any] = {
    **_LLAMA_BASE,
    "add_decoder_lora": True,
    "architectures": ["MemoryLLM"],
    "drop_memory_per_layer": True,
    "lora_config": {
        "inference_mode": False,
        "lora_alpha": 8,
        "lora_dropout": 0.1,
        "r": 4,
        "target_modules": ["q_proj", "v_proj", "k_proj", "up_proj", "down_proj", "gate_proj"],
    },
    "max_position_embeddings": 8192,
    "model_type": "llama",
    "num_key_value_heads": 2,
    "rope_scaling": {"factor": 1.8125, "rope_type": "linear", "type": "linear"},
    "rope_theta": 500000.0,
    "transformers_version": "4.48.2",
}

_MPLUS: dict[str, Any] = {
    **_MEMORYLLM,
    "add_encoder_retriever": True,
    "add_selector": True,
    "architectures": ["MPlus"],
    "decay_frequency": 1,
    "detach_hidden_state": True,
    "initial_rf_when_moving_stm_to_ltm": 10,
    "ltm_initial_size": 16,
    "maintain_memory_keys": False,
    "map_from_hidden_states": True,
    "num_ltm_blocks": 2,
    "num_selector_layers": 2,
    "put_cached_dropped_memory_on_cpu": True,
    "rope_scaling": {
        "factor": 8.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 64,
        "rope_type": "llama3",
    },
    "selector_hidden_dim": 16,
    "update_ltm_frequency": 2,
    "update_ltm_mode": "immediate",
}

_MEMORYLLM_7B: dict[str, Any] = {
    **_LLAMA_BASE,
    # The public config's extra fields; the 7B code reads none of them.
    "add_pad_token": False,
    "add_positional_embedding": True,
    "delta_memory_ratio": 1.0,
    "drop_memory_token": False,
    "new_memory_embedding_fullset": True,
    "pad_to_max_length": False,
    "put_memory_on_cpu": False,
    "share_position_ids": False,
    "shrink_to_one_embedding": True,
    "split_positional_embedding": True,
    "use_negative_position_ids": False,
    "architectures": ["MemoryLLM"],
    "interpolate_position_ids": True,
    # Below (num_blocks+1)*K, so position interpolation is active (scale 21/40), as in the public model.
    "max_position_embeddings": 21,
    "model_type": "memoryllm",
    "rope_scaling": None,
    "rope_theta": 10000.0,
    "transformers_version": "4.40.0",
}

_BASE_CONFIGS = {"memoryllm": _MEMORYLLM, "mplus": _MPLUS, "memoryllm-7b": _MEMORYLLM_7B}

# Fields computed from others unless overridden, so one override (e.g. num_hidden_layers) stays coherent.
_DERIVED: dict[str, dict[str, Callable[[dict[str, Any]], Any]]] = {
    "memoryllm": {
        "head_dim": lambda c: c["hidden_size"] // c["num_attention_heads"],
        "num_memory_tokens": lambda c: c["num_blocks"] * c["num_tokens"],
    },
    "mplus": {
        "head_dim": lambda c: c["hidden_size"] // c["num_attention_heads"],
        "num_memory_tokens": lambda c: c["num_blocks"] * c["num_tokens"],
        "selector_layers": lambda c: list(range(c["num_hidden_layers"])),
    },
    "memoryllm-7b": {
        "new_delta_memory_length": lambda c: float(c["num_tokens"]),
        # The 7B code has no GQA.
        "num_key_value_heads": lambda c: c["num_attention_heads"],
    },
}


def checkpoint_config(kind: str, vocab: int, **overrides: Any) -> dict[str, Any]:
    """The config.json of a checkpoint of `kind` in the official style, with `overrides` applied."""
    derived = _DERIVED[kind]
    known = {*_BASE_CONFIGS[kind], *derived, "vocab_size"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown config field(s) for kind {kind!r}: {', '.join(unknown)}")
    config = {**_BASE_CONFIGS[kind], "vocab_size": vocab, **overrides}
    for name, derive in derived.items():
        if name not in overrides:
            config[name] = derive(config)
    if config["vocab_size"] < vocab:
        raise ValueError(f"vocab_size={config['vocab_size']} is smaller than the tokenizer's {vocab}")
    return config


def generation_config(config: dict[str, Any], *, chat: bool) -> dict[str, Any]:
    ids = {"bos_token_id": config["bos_token_id"], "pad_token_id": config["pad_token_id"]}
    if not chat:
        return {"_from_model_config": True, **ids, "eos_token_id": config["eos_token_id"],
                "transformers_version": config["transformers_version"]}
    # Llama-3 instruct style: a turn ends at <|eot_id|>, sampling settings of the 8B chat model.
    return {**ids, "do_sample": True, "eos_token_id": [config["eos_token_id"], EOT_ID], "temperature": 0.6,
            "top_p": 0.9, "transformers_version": config["transformers_version"]}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    # The layout of transformers' to_json_string, so files compare like hub files.
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# --- weights ---------------------------------------------------------------------------------------

Draw = Callable[[torch.Generator], torch.Tensor]


def _normal(shape: tuple[int, ...], std: float, mean: float = 0.0) -> Draw:
    return lambda g: torch.randn(shape, generator=g) * std + mean


def _linear(out_dim: int, in_dim: int) -> Draw:
    return _normal((out_dim, in_dim), 1 / math.sqrt(in_dim))


def _weights(config: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    # A private generator: writing a checkpoint must not disturb, or depend on, the global RNG.
    generator = torch.Generator().manual_seed(seed)
    return {name: draw(generator).contiguous() for name, draw in _tensor_specs(config)}


def _tensor_specs(config: dict[str, Any]) -> Iterator[tuple[str, Draw]]:
    d, vocab, layers = config["hidden_size"], config["vocab_size"], config["num_hidden_layers"]
    yield "model.embed_tokens.weight", _normal((vocab, d), 1.0)
    for layer in range(layers):
        yield from _layer_specs(config, layer)
    yield "model.norm.weight", _normal((d,), 0.1, 1.0)
    yield "lm_head.weight", _normal((vocab, d), 2 / math.sqrt(d))
    yield from _memory_specs(config)


def _layer_specs(config: dict[str, Any], layer: int) -> Iterator[tuple[str, Draw]]:
    d, inter = config["hidden_size"], config["intermediate_size"]
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or d // heads
    prefix = f"model.layers.{layer}"
    yield f"{prefix}.input_layernorm.weight", _normal((d,), 0.1, 1.0)
    attn = {"q_proj": (heads * head_dim, d), "k_proj": (kv_heads * head_dim, d),
            "v_proj": (kv_heads * head_dim, d), "o_proj": (d, heads * head_dim)}
    for name, shape in attn.items():
        yield from _projection_specs(config, f"{prefix}.self_attn.{name}", name, *shape)
    if config.get("add_selector") and layer in config["selector_layers"]:
        yield from _selector_specs(config, f"{prefix}.self_attn")
    mlp = {"gate_proj": (inter, d), "up_proj": (inter, d), "down_proj": (d, inter)}
    for name, shape in mlp.items():
        yield from _projection_specs(config, f"{prefix}.mlp.{name}", name, *shape)
    yield f"{prefix}.post_attention_layernorm.weight", _normal((d,), 0.1, 1.0)


def _projection_specs(
    config: dict[str, Any], path: str, name: str, out_dim: int, in_dim: int
) -> Iterator[tuple[str, Draw]]:
    """A linear as peft saves it: a LoRA-targeted one keeps its frozen weight under `base_layer`."""
    lora = config.get("lora_config")
    if not lora or name not in lora["target_modules"]:
        yield f"{path}.weight", _linear(out_dim, in_dim)
        return
    r = lora["r"]
    yield f"{path}.base_layer.weight", _linear(out_dim, in_dim)
    adapters = ["default", "decoder_adapter"] if config.get("add_decoder_lora") else ["default"]
    for adapter in adapters:
        yield f"{path}.lora_A.{adapter}.weight", _linear(r, in_dim)
        # Non-zero B (unlike peft's init), so every adapter changes the outputs and tests can tell them apart.
        yield f"{path}.lora_B.{adapter}.weight", _normal((out_dim, r), math.sqrt(0.09 / r))


def _selector_specs(config: dict[str, Any], path: str) -> Iterator[tuple[str, Draw]]:
    d, h, depth = config["hidden_size"], config["selector_hidden_dim"], config["num_selector_layers"]
    if depth not in (1, 2):
        raise ValueError(f"num_selector_layers={depth}: the official M+ code builds only 1 or 2")
    names = ["query_proj", "key_proj"]
    if config.get("add_encoder_retriever"):
        names.append("encoder_query_proj")
    for name in names:
        if depth == 1:
            yield f"{path}.{name}.weight", _linear(h, d)
        else:
            # nn.Sequential(Linear, SiLU, Linear): the weights sit at indices 0 and 2.
            yield f"{path}.{name}.0.weight", _linear(2 * h, d)
            yield f"{path}.{name}.2.weight", _linear(h, 2 * h)


def _memory_specs(config: dict[str, Any]) -> Iterator[tuple[str, Draw]]:
    d, layers, K = config["hidden_size"], config["num_hidden_layers"], config["num_tokens"]
    # For M+, `memory` is only the short-term part; the LTM blocks live in ltm.{l}.
    rows = (config["num_blocks"] - config.get("num_ltm_blocks", 0)) * K
    yield "memory", _normal((layers, rows, d), 1.0)
    if config["add_bos_embedding"]:
        yield "bos_embedding", _normal((layers, 1, d), 1.0)
    yield "new_memory_positional_emb", _normal((1, 1, d), 0.5)
    if "num_ltm_blocks" not in config:
        # Trained checkpoints are initialised; M+ has no such buffer.
        yield "initialized", lambda g: torch.tensor(1, dtype=torch.uint8)
        return
    size, rf = config["ltm_initial_size"], float(config["initial_rf_when_moving_stm_to_ltm"])
    for layer in range(layers):
        yield f"ltm.{layer}", _normal((size, d), 1.0)
        yield f"ltm_keys.{layer}", _normal((size, config["selector_hidden_dim"]), 1.0)
        # Distinct ages: M+ orders retrieved rows by age, and ties would make that order machine-dependent.
        yield f"ltm_ages.{layer}", lambda g: torch.randperm(size, generator=g).float() * K
        yield f"ltm_recall_frequencies.{layer}", lambda g: torch.full((size,), rf)


def _write_weights(folder: Path, tensors: dict[str, torch.Tensor], shards: int) -> None:
    names = sorted(tensors)
    if not 1 <= shards <= len(names):
        raise ValueError(f"shards={shards}: must be between 1 and the tensor count {len(names)}")
    # Files of an earlier write with another layout would make loaders pick the wrong weights.
    for stale in folder.glob("model*.safetensors*"):
        stale.unlink()
    metadata = {"format": "pt"}
    if shards == 1:
        save_file(tensors, str(folder / "model.safetensors"), metadata=metadata)
        return
    weight_map: dict[str, str] = {}
    for index in range(shards):
        # Contiguous runs of the sorted keys, as transformers splits a state dict.
        part = names[index * len(names) // shards:(index + 1) * len(names) // shards]
        filename = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        save_file({name: tensors[name] for name in part}, str(folder / filename), metadata=metadata)
        weight_map.update(dict.fromkeys(part, filename))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    _write_json(folder / "model.safetensors.index.json", {"metadata": {"total_size": total},
                                                          "weight_map": weight_map})
