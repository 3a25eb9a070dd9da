"""Loading checkpoints: shards, key checks, broken files, pickle-only folders, quantized module types,
and finding a checkpoint (folder, preset, hub id)."""

from __future__ import annotations

import os

import bitsandbytes as bnb
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from memchat.engine.load import LoadError, load, resolve
from memchat.engine.model import LoRALinear
from memchat.engine.quantize import QuantError
from memchat.engine.tiny import KINDS, write_tiny_checkpoint

from ._util import assert_states_equal, run_module

BACKBONE = {
    "self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
}


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


@pytest.mark.parametrize("kind", KINDS)
def test_sharded_and_single_file_load_identically(tmp_path, kind):
    single = write_tiny_checkpoint(tmp_path / "single", kind, seed=3)
    sharded = write_tiny_checkpoint(tmp_path / "sharded", kind, seed=3, shards=3)
    assert len(list(sharded.glob("model-*-of-00003.safetensors"))) == 3
    assert not (sharded / "model.safetensors").exists()
    m1, s1 = load(single, device="cpu", quant="none")
    m3, s3 = load(sharded, device="cpu", quant="none")
    w1, w3 = _weights(m1), _weights(m3)
    assert sorted(w1) == sorted(w3)
    for name in w1:
        assert w1[name].dtype == w3[name].dtype and torch.equal(w1[name], w3[name]), name
    assert not any(t.is_meta for t in w1.values())
    assert_states_equal(s1, s3)
    # ...and the load is what the file holds: the memory pool arrives bit for bit.
    assert torch.equal(s1.memory, load_file(single / "model.safetensors")["memory"])


def test_different_seed_gives_different_weights(tiny_checkpoint):
    m0, _ = load(tiny_checkpoint("memoryllm", seed=0), device="cpu", quant="none")
    m1, _ = load(tiny_checkpoint("memoryllm", seed=1), device="cpu", quant="none")
    assert not torch.equal(m0.lm_head.weight, m1.lm_head.weight)


def _rewrite(folder, edit) -> None:
    path = folder / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def test_missing_key_is_listed(tmp_path):
    folder = write_tiny_checkpoint(tmp_path, "memoryllm")
    key = "model.layers.1.mlp.up_proj.lora_B.decoder_adapter.weight"
    _rewrite(folder, lambda t: t.pop(key))
    with pytest.raises(LoadError, match="missing") as err:
        load(folder, device="cpu")
    assert key in str(err.value)


def test_missing_state_key_is_listed(tmp_path):
    folder = write_tiny_checkpoint(tmp_path, "mplus")
    _rewrite(folder, lambda t: t.pop("ltm_keys.1"))
    with pytest.raises(LoadError, match=r"ltm_keys\.1"):
        load(folder, device="cpu")


def test_unexpected_key_is_listed(tmp_path):
    folder = write_tiny_checkpoint(tmp_path, "memoryllm")
    _rewrite(folder, lambda t: t.update({"model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(8)}))
    with pytest.raises(LoadError, match="unexpected") as err:
        load(folder, device="cpu")
    assert "model.layers.0.self_attn.rotary_emb.inv_freq" in str(err.value)


def test_key_check_spans_all_shards(tmp_path):
    folder = write_tiny_checkpoint(tmp_path, "memoryllm", shards=3)
    last = sorted(folder.glob("model-*.safetensors"))[-1]
    tensors = load_file(last)
    victim = sorted(tensors)[0]
    del tensors[victim]
    save_file(tensors, str(last), metadata={"format": "pt"})
    with pytest.raises(LoadError, match="missing") as err:
        load(folder, device="cpu")
    assert victim in str(err.value)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "short_payload"])
def test_damaged_safetensors_raise(tmp_path, damage):
    folder = write_tiny_checkpoint(tmp_path, "memoryllm")
    path = folder / "model.safetensors"
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(bytes((i * 131 + 7) % 256 for i in range(len(data))))
    else:
        path.write_bytes(data[:-64])
    with pytest.raises(Exception) as err:  # noqa: B017 (any type, as long as it is not a silent success)
        load(folder, device="cpu")
    assert str(err.value).strip()


def test_pickle_only_checkpoint_is_refused(tmp_path):
    folder = write_tiny_checkpoint(tmp_path, "memoryllm")
    tensors = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(tensors, folder / "pytorch_model.bin")
    with pytest.raises(LoadError, match="safetensors"):
        load(folder, device="cpu")


def test_folder_without_weights_is_refused(tmp_path):
    folder = write_tiny_checkpoint(tmp_path, "memoryllm")
    (folder / "model.safetensors").unlink()
    with pytest.raises(LoadError, match="model.safetensors"):
        load(folder, device="cpu")


def test_unknown_quant_mode_and_missing_cuda(tiny_checkpoint):
    folder = tiny_checkpoint("memoryllm")
    with pytest.raises(QuantError, match="nf4"):
        load(folder, device="cpu", quant="fp4")
    if not torch.cuda.is_available():
        with pytest.raises(LoadError, match="cuda"):
            load(folder, device="cuda")


def test_initialized_flag_comes_from_the_checkpoint(tmp_path):
    folder = write_tiny_checkpoint(tmp_path, "memoryllm")
    _, state = load(folder, device="cpu")
    assert state.initialized
    _rewrite(folder, lambda t: t.update({"initialized": torch.tensor(0, dtype=torch.uint8)}))
    _, state = load(folder, device="cpu")
    assert not state.initialized


def test_mplus_ltm_ages_are_truncated_to_integers(tmp_path):
    folder = write_tiny_checkpoint(tmp_path, "mplus")
    ages = torch.tensor([0.0, 1.5, 2.9, 7.2] * 4)
    _rewrite(folder, lambda t: t.update({"ltm_ages.0": ages}))
    _, state = load(folder, device="cpu")
    # put_ltm_to_numpy keeps int(age); the state holds float64 like the official numpy arrays.
    assert state.ltm.ages[0].dtype == torch.float64
    assert state.ltm.ages[0].tolist() == [0.0, 1.0, 2.0, 7.0] * 4
    assert state.ltm.recall_frequencies[0].dtype == torch.float64
    assert state.memory_ages is not None and not state.memory_ages.any()
    assert all(len(c) == 0 for c in state.ltm.cached_rows) and state.ltm.update_step == 0


# --- quantization: which modules are quantized --------------------------------------------------------

QUANT_TYPES = {"nf4": bnb.nn.Linear4bit, "int8": bnb.nn.Linear8bitLt}


def _is_quantized(module: nn.Module) -> bool:
    return isinstance(module, tuple(QUANT_TYPES.values()))


def _plain_float(param: torch.Tensor) -> bool:
    return type(param) is nn.Parameter and param.dtype == torch.float32


@pytest.mark.parametrize("quant", ["nf4", "int8"])
@pytest.mark.parametrize("kind", ["memoryllm", "mplus", "memoryllm-7b"])
def test_only_backbone_linears_are_quantized(tiny_checkpoint, kind, quant):
    model, state = load(tiny_checkpoint(kind), device="cpu", quant=quant, dtype=torch.float32)
    cfg = model.config
    expected = QUANT_TYPES[quant]
    backbone = set()
    for block in model.layers:
        for part, names in BACKBONE.items():
            for name in names:
                module = getattr(getattr(block, part), name)
                if isinstance(module, LoRALinear):
                    assert type(module.base_layer) is expected, name
                    backbone.add(id(module.base_layer))
                    for adapters in (module.lora_A, module.lora_B):
                        assert set(adapters) == (
                            {"default", "decoder_adapter"} if cfg.add_decoder_lora else {"default"}
                        )
                        for linear in adapters.values():
                            assert not _is_quantized(linear) and _plain_float(linear.weight)
                else:
                    assert type(module) is expected, name
                    backbone.add(id(module))
    assert len(backbone) == 7 * cfg.num_layers
    # Nothing else is quantized: LoRA, selectors, lm_head, embeddings, norms and memory parameters.
    others = [m for m in model.modules() if _is_quantized(m) and id(m) not in backbone]
    assert others == []
    assert (cfg.lora is not None) == (kind != "memoryllm-7b")
    for name, param in model.named_parameters():
        if not any(f".{p}." in name for names in BACKBONE.values() for p in names) or ".lora_" in name:
            assert _plain_float(param), name
    assert _plain_float(model.new_memory_positional_emb) and _plain_float(model.bos_embedding)
    if cfg.is_mplus:
        for block in model.layers:
            for sel in ("query_proj", "key_proj", "encoder_query_proj"):
                for linear in getattr(block.self_attn, sel):
                    if isinstance(linear, nn.Linear):
                        assert not _is_quantized(linear) and _plain_float(linear.weight)
        rows = [state.ltm.live_rows(layer) for layer in range(state.ltm.layers)]
        assert all(t.dtype == torch.float32 for t in rows + state.ltm.keys)
    assert state.memory.dtype == torch.float32


# --- resolve: folders, presets, hub ids -------------------------------------------------------------------


def test_resolve_folder_and_nonsense(tiny_checkpoint, tmp_path):
    folder = tiny_checkpoint("memoryllm")
    assert resolve(str(folder), cache_dir=tmp_path) == folder
    with pytest.raises(LoadError, match="neither"):
        resolve("no/such/local/folder", cache_dir=tmp_path)


def test_preset_is_written_once_and_reused(tmp_path):
    folder = resolve("tiny", cache_dir=tmp_path)
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    os.utime(folder / "config.json", ns=(1, 1))  # any rewrite would move this stamp
    stamps["config.json"] = 1
    again = resolve("tiny", cache_dir=tmp_path)
    assert again == folder
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps
    # Only the finished folder is left: no temporary directories behind.
    assert [p.name for p in folder.parent.iterdir()] == ["tiny"]
    model, state = load(folder, device="cpu")
    assert model.config.lora is not None and state.initialized


def test_two_processes_resolve_the_same_preset_concurrently(tmp_path):
    import subprocess
    import sys
    import time

    from ._util import REPO

    # Each process imports everything, reports ready, then waits for one shared start signal, so both
    # look for the preset folder within a millisecond of each other and both write it.
    code = (
        "import sys, time; from pathlib import Path; from memchat.engine.load import resolve\n"
        "import memchat.engine.tiny\n"
        "root, me = Path(sys.argv[1]), sys.argv[2]\n"
        "(root / f'ready-{me}').touch()\n"
        "while not (root / 'go').exists(): time.sleep(0.0005)\n"
        "print(resolve('tiny-mplus', cache_dir=root / 'cache'))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path), str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready-{i}").exists() for i in range(2)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "a process died early"
        time.sleep(0.01)
    (tmp_path / "go").touch()
    results = [p.communicate(timeout=120) for p in procs]
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
    folder = tmp_path / "cache" / "models" / "tiny-mplus"
    assert {out.strip() for out, _ in results} == {str(folder)}
    assert [p.name for p in folder.parent.iterdir()] == ["tiny-mplus"]
    model, _ = load(folder, device="cpu")
    assert model.config.is_mplus


def test_hub_id_offline_gives_a_one_line_load_error(tmp_path):
    code = (
        "from memchat.engine.load import resolve, LoadError\n"
        "try:\n    resolve('memchat-test-nobody/no-such-model-4b70ee55')\n"
        "except LoadError as e:\n    print('LOADERROR', e)\n"
        "else:\n    print('RESOLVED')\n"
    )
    hf = tmp_path / "hf"
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(hf), "HF_HUB_CACHE": str(hf / "hub")}
    proc = run_module("-c", code, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("LOADERROR"), proc.stdout
    assert "memchat-test-nobody/no-such-model-4b70ee55" in lines[0]
    assert "folder" in lines[0]


@pytest.mark.parametrize("kind", ["memoryllm", "mplus"])
def test_initial_state_reloads_without_weights(tiny_checkpoint, kind):
    from memchat.engine.config import MemoryConfig
    from memchat.engine.load import load_initial_state

    folder = tiny_checkpoint(kind, shards=3)
    _, state = load(folder, device="cpu", dtype=torch.float32)
    again = load_initial_state(folder, MemoryConfig.from_file(folder), torch.float32, torch.device("cpu"))
    assert_states_equal(again, state)


def test_user_errors_share_one_base_class():
    from memchat.engine.config import ConfigError
    from memchat.errors import MemchatError

    for error in (ConfigError, LoadError, QuantError):
        assert issubclass(error, MemchatError)
