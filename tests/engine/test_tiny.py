import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoTokenizer, GenerationConfig

from memchat.engine.tiny import KINDS, tiny_tokenizer, write_tiny_checkpoint

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO.parent / "shared" / "fixtures" / "official"
FIXTURE_OF = {"memoryllm": "memoryllm-tiny", "mplus": "mplus-tiny", "memoryllm-7b": "memoryllm-7b-tiny"}
# Overrides that give each kind the fixture's sizes; the vocabulary is the tokenizer's, never 256.
FIXTURE_SIZES = {
    "memoryllm": {"num_hidden_layers": 3},
    "mplus": {"num_tokens": 4, "num_blocks": 6, "ltm_initial_size": 12, "max_position_embeddings": 512},
    "memoryllm-7b": {"num_hidden_layers": 3},
}
VOCAB_KEYS = {"model.embed_tokens.weight", "lm_head.weight"}
TEXTS = [
    "Hello, world!",
    "  leading and trailing spaces  \n\ttabs\r\nand newlines\n",
    "Café, naïve, Øresund, señor, Ærø, çà et là",
    "日本語のテキストと中文文本，한국어 텍스트",
    "Emoji: 😀🎉👩‍👩‍👧‍👦 🏳️‍🌈 and flags 🇫🇷",
    "Math ∑∫√∞ ≠ ≤ ≥, arrows → ←, zero-width\u200bjoiner, RTL שלום مرحبا",
    "<|eot_id|> typed as text, and <s> too",
    "Spaces before punctuation , like this . Or this ! It 's what they do n't clean up ?",
]


def _fixture(kind: str) -> Path:
    folder = FIXTURES / FIXTURE_OF[kind]
    if not folder.is_dir():
        pytest.skip(f"official fixtures not found at {FIXTURES}")
    return folder


def _header(path: Path) -> tuple[dict[str, str] | None, dict[str, tuple[str, tuple[int, ...]]]]:
    with safe_open(path, "pt") as f:
        slices = {k: f.get_slice(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
        return f.metadata(), {k: (s.get_dtype(), tuple(s.get_shape())) for k, s in slices.items()}


def _sha256(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def _chat_ids(tok, messages: list[dict]) -> list[int]:
    out = tok.apply_chat_template(messages, add_generation_prompt=True)
    # transformers 5 returns a BatchEncoding by default, 4.x a plain list.
    return list(out["input_ids"] if isinstance(out, Mapping) else out)


@pytest.mark.parametrize("kind", KINDS)
def test_keys_dtypes_and_shapes_match_the_official_fixture(tmp_path, kind):
    fixture = _fixture(kind)
    write_tiny_checkpoint(tmp_path, kind, **FIXTURE_SIZES[kind])
    metadata, ours = _header(tmp_path / "model.safetensors")
    expected_metadata, expected = _header(fixture / "model.safetensors")
    assert metadata == expected_metadata == {"format": "pt"}
    assert set(ours) == set(expected)
    vocab = _config(tmp_path)["vocab_size"]
    for key, (dtype, shape) in expected.items():
        if key in VOCAB_KEYS:
            shape = (vocab, *shape[1:])
        assert ours[key] == (dtype, shape), key


@pytest.mark.parametrize("kind", KINDS)
def test_config_matches_the_fixture_apart_from_the_vocabulary(tmp_path, kind):
    fixture = _fixture(kind)
    ours = _config(write_tiny_checkpoint(tmp_path, kind, **FIXTURE_SIZES[kind]))
    assert ours["vocab_size"] == 512
    assert {**ours, "vocab_size": 256} == _config(fixture)
    # Byte layout of save_pretrained as well: sorted keys, two-space indent, final newline.
    assert (tmp_path / "config.json").read_text() == json.dumps(ours, indent=2, sort_keys=True) + "\n"


@pytest.mark.parametrize("kind", KINDS)
def test_default_sizes(tmp_path, kind):
    config = _config(write_tiny_checkpoint(tmp_path, kind))
    tensors = load_file(tmp_path / "model.safetensors")
    heads = config["num_attention_heads"]
    assert (config["num_hidden_layers"], config["hidden_size"], heads) == (2, 64, 4)
    assert config["num_key_value_heads"] == (4 if kind == "memoryllm-7b" else 2)
    assert (config["num_tokens"], config["num_blocks"], config["intermediate_size"]) == (8, 4, 128)
    rows = (4 - 2) * 8 if kind == "mplus" else 4 * 8
    assert tensors["memory"].shape == (2, rows, 64)
    assert all(t.dtype == torch.float32 for k, t in tensors.items() if k != "initialized")
    if kind == "mplus":
        assert config["selector_layers"] == [0, 1]
        assert config["num_memory_tokens"] == 32
        assert tensors["ltm.1"].shape == (16, 64) and tensors["ltm_keys.1"].shape == (16, 16)


@pytest.mark.parametrize("kind", ["memoryllm", "memoryllm-7b"])
def test_memoryllm_checkpoints_are_initialised(tmp_path, kind):
    initialized = load_file(write_tiny_checkpoint(tmp_path, kind) / "model.safetensors")["initialized"]
    assert initialized.dtype == torch.uint8 and initialized.shape == () and initialized.item() == 1


def test_mplus_long_term_memory_state(tmp_path):
    tensors = load_file(write_tiny_checkpoint(tmp_path, "mplus") / "model.safetensors")
    assert "initialized" not in tensors
    for layer in range(2):
        ages = tensors[f"ltm_ages.{layer}"]
        assert ages.dtype == torch.float32 and ages.shape == (16,)
        assert torch.equal(ages, ages.round()) and (ages >= 0).all()
        assert len(set(ages.tolist())) == 16
        assert torch.equal(tensors[f"ltm_recall_frequencies.{layer}"], torch.full((16,), 10.0))


def test_random_values_follow_the_fixture_rules(tmp_path):
    tensors = load_file(write_tiny_checkpoint(tmp_path, "memoryllm") / "model.safetensors")
    norm = tensors["model.layers.0.input_layernorm.weight"]
    assert 0.95 < norm.mean() < 1.05 and 0.05 < norm.std() < 0.15
    lora_b = tensors["model.layers.0.mlp.up_proj.lora_B.decoder_adapter.weight"]
    assert 0.1 < lora_b.std() < 0.2  # sqrt(0.09 / r) = 0.15
    assert tensors["model.embed_tokens.weight"].std() == pytest.approx(1.0, abs=0.05)
    assert tensors["lm_head.weight"].std() == pytest.approx(0.25, abs=0.02)  # sqrt(4 / d)
    down = tensors["model.layers.1.mlp.down_proj.base_layer.weight"]
    assert down.std() == pytest.approx(128**-0.5, rel=0.1)
    # Both adapters are non-zero and differ, so a wrong adapter switch shows.
    assert not torch.equal(lora_b, tensors["model.layers.0.mlp.up_proj.lora_B.default.weight"])


@pytest.mark.parametrize("kind", KINDS)
def test_same_arguments_give_byte_identical_folders(tmp_path, kind):
    torch.manual_seed(1)
    first = _sha256(write_tiny_checkpoint(tmp_path / "a", kind, seed=7))
    torch.manual_seed(2)
    state = torch.get_rng_state()
    second = _sha256(write_tiny_checkpoint(tmp_path / "b", kind, seed=7))
    assert first == second
    assert torch.equal(torch.get_rng_state(), state), "the global RNG must not be used"
    other = _sha256(write_tiny_checkpoint(tmp_path / "c", kind, seed=8))
    assert other["model.safetensors"] != first["model.safetensors"]
    assert other["tokenizer.json"] == first["tokenizer.json"]


@pytest.mark.parametrize("llama2_style", [False, True])
def test_tokenizer_training_is_deterministic_across_processes(tmp_path, llama2_style):
    tiny_tokenizer(tmp_path / "here", llama2_style=llama2_style)
    script = (
        "import sys; from pathlib import Path; from memchat.engine.tiny import tiny_tokenizer; "
        "tiny_tokenizer(Path(sys.argv[1]), llama2_style=sys.argv[2] == 'True')"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "there"), str(llama2_style)],
                   check=True, env=env, cwd=REPO)
    assert _sha256(tmp_path / "here") == _sha256(tmp_path / "there")


@pytest.mark.parametrize("kind", KINDS)
def test_sharded_checkpoint_equals_the_single_file(tmp_path, kind):
    single = load_file(write_tiny_checkpoint(tmp_path / "one", kind) / "model.safetensors")
    folder = write_tiny_checkpoint(tmp_path / "three", kind, shards=3)
    files = sorted(p.name for p in folder.glob("model*.safetensors"))
    assert files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert set(index) == {"metadata", "weight_map"}
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in single.values())
    assert set(index["weight_map"]) == set(single) and set(index["weight_map"].values()) == set(files)
    merged: dict[str, torch.Tensor] = {}
    for name in files:
        with safe_open(folder / name, "pt") as f:
            assert f.metadata() == {"format": "pt"}
        part = load_file(folder / name)
        assert all(index["weight_map"][key] == name for key in part)
        assert not set(part) & set(merged), "a tensor is in two shards"
        merged.update(part)
    assert merged.keys() == single.keys()
    for key, tensor in single.items():
        assert merged[key].dtype == tensor.dtype
        assert merged[key].numpy().tobytes() == tensor.numpy().tobytes(), key
    # Shards hold contiguous runs of the sorted keys.
    assert list(index["weight_map"].values()) == sorted(index["weight_map"].values())


def test_rewriting_a_folder_replaces_the_weight_layout(tmp_path):
    write_tiny_checkpoint(tmp_path, shards=2)
    write_tiny_checkpoint(tmp_path)
    assert sorted(p.name for p in tmp_path.glob("model*")) == ["model.safetensors"]
    write_tiny_checkpoint(tmp_path, shards=2)
    assert not (tmp_path / "model.safetensors").exists()


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        write_tiny_checkpoint(tmp_path, "gpt2")
    with pytest.raises(ValueError, match="num_layers"):
        write_tiny_checkpoint(tmp_path, num_layers=3)
    with pytest.raises(ValueError, match="vocab_size"):
        write_tiny_checkpoint(tmp_path, vocab_size=256)
    with pytest.raises(ValueError, match="shards"):
        write_tiny_checkpoint(tmp_path, shards=0)
    with pytest.raises(ValueError, match="num_selector_layers"):
        write_tiny_checkpoint(tmp_path, "mplus", num_selector_layers=3)


def test_overrides_reshape_memoryllm_consistently(tmp_path):
    write_tiny_checkpoint(tmp_path, num_hidden_layers=3, num_blocks=8, num_tokens=4, hidden_size=96,
                          num_attention_heads=6, intermediate_size=200, vocab_size=600,
                          lora_config={"lora_alpha": 4, "r": 2, "target_modules": ["q_proj", "o_proj"]},
                          add_decoder_lora=False)
    config, tensors = _config(tmp_path), load_file(tmp_path / "model.safetensors")
    assert config["head_dim"] == 16 and config["num_memory_tokens"] == 32
    assert tensors["memory"].shape == (3, 32, 96)
    assert tensors["bos_embedding"].shape == (3, 1, 96)
    assert tensors["model.embed_tokens.weight"].shape == (600, 96)
    assert tensors["model.layers.2.self_attn.q_proj.base_layer.weight"].shape == (96, 96)
    assert tensors["model.layers.2.self_attn.o_proj.lora_A.default.weight"].shape == (2, 96)
    assert tensors["model.layers.2.self_attn.k_proj.weight"].shape == (32, 96)
    assert tensors["model.layers.2.mlp.down_proj.weight"].shape == (96, 200)
    assert not any("decoder_adapter" in key for key in tensors)
    assert "model.layers.3.input_layernorm.weight" not in tensors


def test_overrides_reshape_mplus_consistently(tmp_path):
    write_tiny_checkpoint(tmp_path, "mplus", num_hidden_layers=3, num_blocks=5, num_ltm_blocks=1,
                          ltm_initial_size=10, selector_hidden_dim=8, num_selector_layers=1,
                          add_encoder_retriever=False)
    config, tensors = _config(tmp_path), load_file(tmp_path / "model.safetensors")
    assert config["selector_layers"] == [0, 1, 2] and config["num_memory_tokens"] == 40
    assert tensors["memory"].shape == (3, 32, 64)
    assert tensors["ltm.2"].shape == (10, 64) and tensors["ltm_keys.2"].shape == (10, 8)
    assert tensors["model.layers.2.self_attn.query_proj.weight"].shape == (8, 64)
    assert tensors["model.layers.2.self_attn.key_proj.weight"].shape == (8, 64)
    assert not any("encoder_query_proj" in key for key in tensors)


def test_mplus_selector_only_on_selector_layers(tmp_path):
    write_tiny_checkpoint(tmp_path, "mplus", selector_layers=[1])
    tensors = load_file(tmp_path / "model.safetensors")
    assert "model.layers.1.self_attn.query_proj.0.weight" in tensors
    assert not any(key.startswith("model.layers.0.self_attn.query_proj") for key in tensors)
    assert "ltm.0" in tensors  # every layer has a long-term memory


def test_7b_keeps_heads_equal_to_kv_heads(tmp_path):
    write_tiny_checkpoint(tmp_path, "memoryllm-7b", num_attention_heads=8, num_tokens=4)
    config, tensors = _config(tmp_path), load_file(tmp_path / "model.safetensors")
    assert config["num_key_value_heads"] == 8 and config["new_delta_memory_length"] == 4.0
    assert tensors["model.layers.0.self_attn.k_proj.weight"].shape == (64, 64)
    assert "lora_config" not in config and "head_dim" not in config


@pytest.mark.parametrize("kind", ["memoryllm", "mplus"])
def test_chat_generation_config(tmp_path, kind):
    write_tiny_checkpoint(tmp_path, kind)
    raw = json.loads((tmp_path / "generation_config.json").read_text())
    assert raw["eos_token_id"] == [2, 5] and raw["bos_token_id"] == 1 and raw["pad_token_id"] == 2
    assert (raw["do_sample"], raw["temperature"], raw["top_p"]) == (True, 0.6, 0.9)
    loaded = GenerationConfig.from_pretrained(tmp_path)
    assert loaded.eos_token_id == [2, 5] and loaded.do_sample


def test_7b_generation_config_matches_the_fixture(tmp_path):
    fixture = _fixture("memoryllm-7b")
    write_tiny_checkpoint(tmp_path, "memoryllm-7b")
    ours = json.loads((tmp_path / "generation_config.json").read_text())
    assert ours == json.loads((fixture / "generation_config.json").read_text())


@pytest.mark.parametrize("kind", KINDS)
def test_tokenizer_round_trips_unicode(tmp_path, kind):
    tok = AutoTokenizer.from_pretrained(write_tiny_checkpoint(tmp_path, kind))
    assert len(tok) == _config(tmp_path)["vocab_size"] == 512
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
        with_bos = tok.encode(text)
        assert with_bos == [1, *ids], "one bos, like Llama"


def test_llama3_special_tokens(tmp_path):
    tok = AutoTokenizer.from_pretrained(write_tiny_checkpoint(tmp_path, "mplus"))
    assert (tok.bos_token, tok.bos_token_id) == ("<|begin_of_text|>", 1)
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token_id) == ("<|end_of_text|>", 2, 2)
    chat_tokens = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    assert tok.convert_tokens_to_ids(chat_tokens) == [3, 4, 5]
    assert tok.encode("<|eot_id|>", add_special_tokens=False) == [5]


def test_llama2_special_tokens(tmp_path):
    tok = AutoTokenizer.from_pretrained(write_tiny_checkpoint(tmp_path, "memoryllm-7b"))
    assert (tok.unk_token, tok.bos_token, tok.eos_token, tok.pad_token) == ("<unk>", "<s>", "</s>", "</s>")
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 2)
    assert not tok.chat_template


@pytest.mark.parametrize("kind", ["memoryllm", "mplus"])
def test_chat_template_is_llama3_style(tmp_path, kind):
    tok = AutoTokenizer.from_pretrained(write_tiny_checkpoint(tmp_path, kind))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Salut ! 😀 日本"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Again?"}]
    ids = _chat_ids(tok, messages)
    header = tok.encode("<|start_header_id|>assistant<|end_header_id|>\n\n", add_special_tokens=False)
    assert ids[0] == 1 and ids.count(1) == 1
    assert ids[-len(header):] == header
    assert ids.count(5) == len(messages)
    assert tok.decode(ids) == (
        "<|begin_of_text|>"
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nSalut ! 😀 日本<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nAgain?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
