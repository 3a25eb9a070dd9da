"""Terminal output, Ctrl-C around injections, times, file watching and the GPU estimate, in-process."""

from __future__ import annotations

import io
import json
import threading
import time
from datetime import datetime

import pytest
from rich.console import Console

from memchat.chat.ui import printable, render_markdown, stream_reply
from memchat.chat.when import WhenError, parse_when
from memchat.engine.config import MemoryConfig
from memchat.engine.load import LoadError
from memchat.ingest.watch import Watch
from memchat.service.memory import gpu_bytes_needed


def test_printable_drops_control_characters_but_keeps_lines():
    assert printable("a\x1b[2Jb\x07c\x00d\r\ne\tf\x9b") == "a[2Jbcd\ne   f"


def terminal(width: int = 20, height: int = 10) -> tuple[Console, io.StringIO]:
    screen = io.StringIO()
    return Console(file=screen, force_terminal=True, width=width, height=height), screen


def test_a_streamed_reply_is_redrawn_as_markdown_in_place_when_it_fits():
    console, screen = terminal()
    reply = stream_reply(console, iter(["**bold**", " and ", "a line longer than twenty\nend"]))
    assert reply == "**bold** and a line longer than twenty\nend"
    render_markdown(console, reply)
    shown = screen.getvalue()
    # 2 rows for the first line at width 20, 1 for the second: back up 2 rows and erase down.
    assert f"{reply}\r\x1b[2A\x1b[J" in shown
    assert "**" not in shown.split("\x1b[J", 1)[1]


def test_a_reply_taller_than_the_screen_or_off_a_terminal_is_left_as_streamed():
    console, screen = terminal(height=5)
    render_markdown(console, "\n".join(f"line {i}" for i in range(8)))
    assert screen.getvalue() == "\n"
    plain = Console(file=io.StringIO(), width=20)
    render_markdown(plain, "**x**")
    assert plain.file.getvalue() == "\n"


def test_ctrl_c_during_a_stream_closes_the_generator_and_propagates():
    closed = []

    def pieces():
        try:
            yield "partial"
            raise KeyboardInterrupt
        finally:
            closed.append(True)

    console, screen = terminal()
    with pytest.raises(KeyboardInterrupt):
        stream_reply(console, pieces())
    assert closed and "partial" in screen.getvalue()


def test_when_reads_people_times_and_whole_days_start_at_midnight():
    yesterday = datetime.fromtimestamp(parse_when("yesterday"))
    assert (yesterday.hour, yesterday.minute) == (0, 0)
    assert abs(parse_when("2 hours ago") - (time.time() - 7200)) < 60
    assert parse_when("2026-01-31 14:00") == datetime(2026, 1, 31, 14, 0).timestamp()
    with pytest.raises(WhenError, match="cannot read the time"):
        parse_when("the day after never")


def test_a_burst_of_writes_is_one_pass_and_reading_files_starts_none(tmp_path):
    stop = threading.Event()
    passes: list[float] = []

    def settles_at(count: int) -> bool:
        """The number of passes reaches `count` and stays there for a quiet spell and more."""
        deadline = time.monotonic() + 10
        while len(passes) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.6)
        return len(passes) == count

    with Watch([tmp_path], quiet=0.3, stop=stop) as watch:
        worker = threading.Thread(target=lambda: [passes.append(time.monotonic()) for _ in watch.bursts()])
        worker.start()
        for i in range(5):
            (tmp_path / f"note{i}.md").write_text("text")
        assert settles_at(1)
        for i in range(5):
            (tmp_path / f"note{i}.md").read_text()
        assert settles_at(1)
        (tmp_path / "note0.md").write_text("changed")
        assert settles_at(2)
        stop.set()
        worker.join(timeout=5)
    assert not worker.is_alive()


# The shape of the 8B MemoryLLM: Llama-3-8B with a 12,800-row memory per layer.
EIGHT_B = dict(
    vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=8, num_tokens=256, num_blocks=50,
    max_position_embeddings=8192, rope_theta=500000.0,
)


def test_the_gpu_estimate_counts_weights_at_their_quantization_plus_memory_and_kv_cache():
    cfg = MemoryConfig.from_dict(EIGHT_B)
    gib = {q: gpu_bytes_needed(cfg, q) / 2**30 for q in ("nf4", "int8", "none")}
    # 6.98 B backbone-linear weights at 0.56, 1 or 2 bytes; in bf16 the 1.05 B embedding weights (2.0 GiB),
    # the pool of 12,800 rows x 32 layers x 4096 (3.1 GiB), the keys and values of its 12,801 prefix rows
    # plus 2,048 rows of room (1.8 GiB) and its un-rotated keys (0.8 GiB); 1.5 GiB more.
    fixed = 1.96 + 3.125 + 1.81 + 0.78 + 1.5
    assert gib["nf4"] == pytest.approx(fixed + 3.66, abs=0.02)
    assert gib["int8"] == pytest.approx(fixed + 6.5, abs=0.02)
    assert gib["none"] == pytest.approx(fixed + 13.0, abs=0.02)


def test_a_gpu_too_small_is_refused_before_loading_with_what_it_needs(tmp_path, monkeypatch):
    import torch

    import memchat.service.memory as service

    (tmp_path / "config.json").write_text(json.dumps(EIGHT_B))
    monkeypatch.setattr(service, "cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (8 << 30, 24 << 30))
    with pytest.raises(LoadError, match=r"needs about 15\.7 GiB of GPU memory with int8 weights but cuda has "
                                        r"8\.0 GiB free; try --quant nf4, a smaller model"):
        service.check_gpu_fits("memoryllm-8b", tmp_path, None, "int8")
    with pytest.raises(LoadError, match=r"needs about 12\.8 GiB .* nf4 weights .*; try a smaller model"):
        service.check_gpu_fits("memoryllm-8b", tmp_path, "cuda:0", None)
    service.check_gpu_fits("memoryllm-8b", tmp_path, "cpu", None)  # the CPU is not checked
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (40 << 30, 80 << 30))
    service.check_gpu_fits("memoryllm-8b", tmp_path, None, "none")
