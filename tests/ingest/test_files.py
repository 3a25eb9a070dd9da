"""Tests for finding and reading the files an ingest takes: real files, real symlinks, real PDFs."""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memchat.ingest import files
from memchat.ingest.files import DEFAULT_MAX_BYTES, Found, IngestError, Skipped, read_text, walk

REPO = Path(__file__).resolve().parents[2]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# --- helpers ----------------------------------------------------------------------------------------------


def write(path: Path, data: str | bytes = "text\n") -> Path:
    """Create a file (and its folders) with the given content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    return path


def found(items: list[Found | Skipped], root: Path) -> list[str]:
    """The found files, as paths relative to root, in the order walk gave them."""
    base = root.resolve()
    return [item.path.relative_to(base).as_posix() for item in items if isinstance(item, Found)]


def skipped(items: list[Found | Skipped], root: Path) -> dict[str, str]:
    """The skipped paths relative to root, with their reasons."""
    return {os.path.relpath(item.path, root).replace(os.sep, "/"): item.reason
            for item in items if isinstance(item, Skipped)}


def make_pdf(pages: list[str]) -> bytes:
    """A minimal valid PDF, one line of Helvetica text per page, with a correct xref table."""
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(len(pages)))
    bodies = [b"<< /Type /Catalog /Pages 2 0 R >>",
              f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode(),
              b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    for i, text in enumerate(pages):
        content = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        bodies.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
                      f"/Resources << /Font << /F1 3 0 R >> >> /Contents {5 + 2 * i} 0 R >>".encode())
        bodies.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content))
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(bodies, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(bodies) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(bodies) + 1, xref)
    return bytes(out)


def encrypt_pdf(data: bytes, user_password: str) -> bytes:
    """The same PDF encrypted with RC4 (which pypdf can do without extra packages)."""
    from pypdf import PdfWriter

    writer = PdfWriter(clone_from=io.BytesIO(data))
    writer.encrypt(user_password=user_password, owner_password="owner", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


# --- order ------------------------------------------------------------------------------------------------


def test_order_is_sorted_by_name_depth_first_and_stable(tmp_path: Path) -> None:
    # created in an order unlike the expected one, so the order of the directory listing does not pass
    for name in ["z.txt", "b/c/d.txt", "a-b.txt", "a/y.txt", "a/x.txt", "B.txt", "b/a.txt"]:
        write(tmp_path / name)
    first = list(walk([tmp_path]))
    # "a/" comes before "a-b.txt" (a folder's files before its next sibling), upper case before lower case
    assert found(first, tmp_path) == ["B.txt", "a/x.txt", "a/y.txt", "a-b.txt", "b/a.txt", "b/c/d.txt",
                                      "z.txt"]
    assert list(walk([tmp_path])) == first


def test_given_paths_keep_their_order(tmp_path: Path) -> None:
    write(tmp_path / "a" / "1.txt")
    write(tmp_path / "z" / "2.txt")
    items = list(walk([tmp_path / "z", tmp_path / "a"]))
    assert found(items, tmp_path) == ["z/2.txt", "a/1.txt"]


def test_paths_are_absolute_found_resolved_skipped_as_walked(tmp_path: Path, monkeypatch) -> None:
    write(tmp_path / "real" / "note.txt")
    write(tmp_path / "real" / "empty.txt", b"")
    os.symlink(tmp_path / "real", tmp_path / "alias")
    monkeypatch.chdir(tmp_path)
    items = list(walk(["alias"]))
    assert items == [Skipped(tmp_path / "alias" / "empty.txt", "empty"),
                     Found((tmp_path / "real" / "note.txt").resolve(), 5)]


# --- .gitignore, hidden, .git -------------------------------------------------------------------------------


def test_nested_gitignore_with_negation_directory_and_anchored_patterns(tmp_path: Path) -> None:
    write(tmp_path / ".gitignore", "*.log\n!important.log\nbuild/\n/top-only.txt\n")
    write(tmp_path / "sub" / ".gitignore", "!debug.log\ncache/\n*.tmp\n")
    expected_found = ["important.log", "keep.txt", "other/build", "sub/debug.log", "sub/deep/cache",
                      "sub/top-only.txt", "x.tmp"]
    for name in expected_found:
        write(tmp_path / name)
    for name in ["app.log", "build/out.txt", "top-only.txt", "sub/other.log", "sub/build/x.txt",
                 "sub/cache/c.txt", "sub/x.tmp"]:
        write(tmp_path / name)

    items = list(walk([tmp_path]))

    assert found(items, tmp_path) == expected_found
    excluded = {path for path, why in skipped(items, tmp_path).items() if why == "excluded by .gitignore"}
    # excluded folders come back once, and nothing inside them is looked at
    assert excluded == {"app.log", "build", "top-only.txt", "sub/other.log", "sub/build", "sub/cache",
                        "sub/x.tmp"}


def test_gitignore_with_a_line_git_rejects_still_applies_its_other_lines(tmp_path: Path) -> None:
    write(tmp_path / ".gitignore", "!\n*.log\n")
    write(tmp_path / "a.log")
    write(tmp_path / "a.txt")
    items = list(walk([tmp_path]))
    assert found(items, tmp_path) == ["a.txt"]
    assert skipped(items, tmp_path)["a.log"] == "excluded by .gitignore"


def test_gitignore_of_a_walked_folder_does_not_apply_to_explicit_files(tmp_path: Path) -> None:
    write(tmp_path / ".gitignore", "*.log\n")
    log = write(tmp_path / "a.log")
    assert list(walk([log])) == [Found(log.resolve(), 5)]


def test_hidden_files_and_folders_inside_a_walked_folder_are_skipped(tmp_path: Path) -> None:
    write(tmp_path / ".obsidian" / "workspace.json", "{}")
    write(tmp_path / ".secret.md")
    write(tmp_path / "visible.md")
    items = list(walk([tmp_path]))
    assert found(items, tmp_path) == ["visible.md"]
    assert skipped(items, tmp_path) == {".obsidian": "hidden", ".secret.md": "hidden"}


def test_git_folder_is_skipped(tmp_path: Path) -> None:
    write(tmp_path / ".git" / "HEAD", "ref: refs/heads/main\n")
    write(tmp_path / ".git" / "description", "text that would otherwise be found\n")
    write(tmp_path / "README.md")
    items = list(walk([tmp_path]))
    assert found(items, tmp_path) == ["README.md"]
    assert [item.path.name for item in items if ".git" in item.path.parts] == [".git"]


def test_explicit_hidden_file_and_folder_are_taken(tmp_path: Path) -> None:
    hidden_file = write(tmp_path / ".notes.md")
    write(tmp_path / ".vault" / "page.md")
    write(tmp_path / ".vault" / ".trash" / "old.md")
    items = list(walk([hidden_file, tmp_path / ".vault"]))
    assert found(items, tmp_path) == [".notes.md", ".vault/page.md"]
    assert skipped(items, tmp_path) == {".vault/.trash": "hidden"}


# --- symlinks and duplicates ----------------------------------------------------------------------------


def test_symlink_to_parent_folder_terminates_and_is_reported(tmp_path: Path) -> None:
    write(tmp_path / "a" / "note.txt")
    os.symlink("..", tmp_path / "a" / "up")  # a/up -> tmp_path, which contains a
    os.symlink(".", tmp_path / "a" / "here")  # a/here -> a
    items = list(walk([tmp_path]))
    assert found(items, tmp_path) == ["a/note.txt"]
    assert skipped(items, tmp_path) == {"a/here": "symlink loop", "a/up": "symlink loop"}


def test_symlink_pointing_at_itself_is_reported(tmp_path: Path) -> None:
    os.symlink("self", tmp_path / "self")
    assert skipped(list(walk([tmp_path])), tmp_path) == {"self": "symlink loop"}
    assert list(walk([tmp_path / "self"])) == [Skipped(tmp_path / "self", "symlink loop")]


def test_broken_symlink_is_reported(tmp_path: Path) -> None:
    os.symlink(tmp_path / "gone.txt", tmp_path / "link.txt")
    reason = "broken symlink: its target does not exist"
    assert list(walk([tmp_path])) == [Skipped(tmp_path / "link.txt", reason)]


def test_file_reached_twice_is_yielded_once(tmp_path: Path) -> None:
    note = write(tmp_path / "notes" / "note.md")
    os.symlink(note, tmp_path / "notes" / "alias.md")  # same file through a symlink
    os.symlink(tmp_path / "notes", tmp_path / "notes-link")  # same folder through a symlink
    items = list(walk([tmp_path, note, tmp_path / "notes"]))  # and given again, twice
    assert items == [Found(note.resolve(), 5)]


def test_symlink_to_a_file_outside_is_followed(tmp_path: Path) -> None:
    outside = write(tmp_path / "outside" / "target.md", "far away\n")
    os.symlink(outside, write(tmp_path / "walked" / "x").parent / "link.md")
    (tmp_path / "walked" / "x").unlink()
    assert list(walk([tmp_path / "walked"])) == [Found(outside.resolve(), 9)]


# --- classification -------------------------------------------------------------------------------------


def test_binary_file_named_md_is_skipped_as_binary(tmp_path: Path) -> None:
    write(tmp_path / "notes.md", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4)
    assert list(walk([tmp_path])) == [Skipped(tmp_path / "notes.md", "binary file")]


def test_file_of_nul_bytes_is_binary(tmp_path: Path) -> None:
    write(tmp_path / "zeros.txt", b"\x00" * 5000)
    assert list(walk([tmp_path])) == [Skipped(tmp_path / "zeros.txt", "binary file")]


def test_control_bytes_without_nul_are_binary(tmp_path: Path) -> None:
    write(tmp_path / "controls.txt", bytes(range(1, 32)) * 100)
    assert list(walk([tmp_path])) == [Skipped(tmp_path / "controls.txt", "binary file")]


def test_nul_after_the_first_8_kib_is_not_looked_at(tmp_path: Path) -> None:
    path = write(tmp_path / "log.txt", b"a" * (files.SNIFF_BYTES + 10) + b"\x00")
    assert list(walk([tmp_path])) == [Found(path.resolve(), files.SNIFF_BYTES + 11)]


def test_text_with_a_few_control_characters_is_text(tmp_path: Path) -> None:
    coloured = "\x1b[31merror\x1b[0m: disk full\n\x0cpage two\n\x1a"
    path = write(tmp_path / "build.log", coloured * 20)
    assert found(list(walk([tmp_path])), tmp_path) == ["build.log"]
    assert read_text(path) == (coloured * 20, None)


def test_utf8_character_cut_at_the_sniff_boundary_is_not_mistaken(tmp_path: Path) -> None:
    # "é" is two bytes in UTF-8; the first 8 KiB end between them
    path = write(tmp_path / "long.txt", ("a" * (files.SNIFF_BYTES - 1) + "é" * 100).encode())
    assert found(list(walk([tmp_path])), tmp_path) == ["long.txt"]
    assert read_text(path) == ("a" * (files.SNIFF_BYTES - 1) + "é" * 100, None)


def test_empty_file_is_skipped(tmp_path: Path) -> None:
    write(tmp_path / "empty.md", b"")
    assert list(walk([tmp_path])) == [Skipped(tmp_path / "empty.md", "empty")]


def test_empty_folder_yields_nothing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert list(walk([tmp_path / "empty"])) == []


def test_not_found_path_is_reported_and_the_others_walked(tmp_path: Path) -> None:
    note = write(tmp_path / "note.md")
    items = list(walk([tmp_path / "missing", note, tmp_path / "note.md" / "below-a-file"]))
    assert items == [Skipped(tmp_path / "missing", "not found"), Found(note.resolve(), 5),
                     Skipped(tmp_path / "note.md" / "below-a-file", "not found")]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_fifo_is_not_a_regular_file_and_does_not_hang(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    assert list(walk([tmp_path])) == [Skipped(tmp_path / "pipe", "not a regular file")]
    with pytest.raises(IngestError, match="^not a regular file$"):
        read_text(tmp_path / "pipe")


def test_pdf_is_found_by_its_magic_whatever_its_name(tmp_path: Path) -> None:
    # a PDF's binary marker line and streams would look binary; the magic wins
    data = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + b"\x00\x01\x02" * 1000
    path = write(tmp_path / "scan-without-extension", data)
    assert list(walk([tmp_path])) == [Found(path.resolve(), len(data))]


# --- size ---------------------------------------------------------------------------------------------------


def test_sparse_2_gb_file_is_skipped_as_too_large_without_reading_it(tmp_path: Path, monkeypatch) -> None:
    big = tmp_path / "huge.txt"
    with open(big, "wb") as f:
        f.truncate(2 * 1024**3)  # sparse: no disk space, no time
    small = write(tmp_path / "small.txt")
    opened: list[str] = []
    real_open = os.open

    def spying_open(path, *args, **kwargs):
        opened.append(os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", spying_open)
    start = time.perf_counter()
    items = list(walk([tmp_path]))
    elapsed = time.perf_counter() - start

    assert items == [Skipped(big, "larger than 10 MB (2.0 GB); raise --max-size to include it"),
                     Found(small.resolve(), 5)]
    assert str(big) not in opened and str(small) in opened
    assert elapsed < 1.0


def test_size_limit_is_inclusive_and_configurable(tmp_path: Path) -> None:
    at_limit = write(tmp_path / "a.txt", b"x" * 1000)
    write(tmp_path / "b.txt", b"x" * 1001)
    write(tmp_path / "c.txt", b"x" * 3 * 1024 * 1024)
    hint = "; raise --max-size to include it"
    assert list(walk([tmp_path], max_bytes=1000)) == [
        Found(at_limit.resolve(), 1000),
        Skipped(tmp_path / "b.txt", f"larger than 1000 bytes (1001 bytes){hint}"),
        Skipped(tmp_path / "c.txt", f"larger than 1000 bytes (3.0 MB){hint}"),
    ]


def test_size_just_over_the_limit_is_shown_in_bytes(tmp_path: Path) -> None:
    with open(tmp_path / "big.txt", "wb") as f:
        f.truncate(DEFAULT_MAX_BYTES + 1)  # "10.0 MB" would read as if it were within "10 MB"
    assert list(walk([tmp_path])) == [
        Skipped(tmp_path / "big.txt",
                "larger than 10,485,760 bytes (10,485,761 bytes); raise --max-size to include it")]


def test_read_text_refuses_a_file_over_the_limit_it_is_given(tmp_path: Path) -> None:
    path = write(tmp_path / "grew.txt", b"x" * 2048)  # as if it grew after the walk
    with pytest.raises(IngestError, match=r"^larger than 1 KB \(2.0 KB\); raise --max-size"):
        read_text(path, max_bytes=1024)
    assert read_text(path) == ("x" * 2048, None)


# --- unreadable -------------------------------------------------------------------------------------------


@pytest.mark.skipif(IS_ROOT, reason="root reads files whatever their mode")
def test_unreadable_file_is_reported(tmp_path: Path) -> None:
    secret = write(tmp_path / "secret.md")
    secret.chmod(0)
    try:
        assert list(walk([tmp_path])) == [Skipped(secret, "unreadable: permission denied")]
        with pytest.raises(IngestError, match="^unreadable: permission denied$"):
            read_text(secret)
    finally:
        secret.chmod(0o600)


@pytest.mark.skipif(IS_ROOT, reason="root lists folders whatever their mode")
def test_unreadable_folder_is_reported_and_the_walk_goes_on(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    write(locked / "inside.md")
    after = write(tmp_path / "z.md")
    locked.chmod(0)
    try:
        assert list(walk([tmp_path])) == [Skipped(locked, "unreadable: permission denied"),
                                          Found(after.resolve(), 5)]
    finally:
        locked.chmod(0o700)


def test_permission_error_on_open_is_reported(tmp_path: Path, monkeypatch) -> None:
    """The same as the chmod test, by refusing the open, so that it also runs as root."""
    secret = write(tmp_path / "secret.md")
    real_open = os.open

    def refusing_open(path, *args, **kwargs):
        if os.fspath(path) == str(secret):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    assert list(walk([tmp_path])) == [Skipped(secret, "unreadable: permission denied")]
    with pytest.raises(IngestError, match="^unreadable: permission denied$"):
        read_text(secret)


def test_permission_error_on_listing_is_reported(tmp_path: Path, monkeypatch) -> None:
    """The same as the chmod folder test, by refusing the listing, so that it also runs as root."""
    locked = tmp_path / "locked"
    write(locked / "inside.md")
    after = write(tmp_path / "z.md")
    real_scandir = os.scandir

    def refusing_scandir(path="."):
        if os.fspath(path) == str(locked):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", refusing_scandir)
    assert list(walk([tmp_path])) == [Skipped(locked, "unreadable: permission denied"),
                                      Found(after.resolve(), 5)]


def test_file_removed_between_walk_and_read(tmp_path: Path) -> None:
    path = write(tmp_path / "gone.md")
    [item] = walk([tmp_path])
    path.unlink()
    with pytest.raises(IngestError, match="^not found$"):
        read_text(item.path)


# --- decoding ----------------------------------------------------------------------------------------------


def test_cp1252_text_is_read_with_a_note(tmp_path: Path) -> None:
    path = write(tmp_path / "old.txt", b"caf\xe9 cr\xe8me \x93quoted\x94\n")
    assert found(list(walk([tmp_path])), tmp_path) == ["old.txt"]
    assert read_text(path) == ("café crème \u201cquoted\u201d\n", "decoded as cp1252")


def test_bytes_cp1252_lacks_fall_back_to_latin1(tmp_path: Path) -> None:
    path = write(tmp_path / "odd.txt", b"na\xefve \x81 text\n")  # 0x81 is undefined in cp1252
    assert read_text(path) == ("naïve \x81 text\n", "decoded as latin-1")


def test_utf8_with_bom(tmp_path: Path) -> None:
    path = write(tmp_path / "bom.txt", "\ufeffhéllo\n".encode())
    assert read_text(path) == ("héllo\n", None)


def test_utf16_with_bom_is_text(tmp_path: Path) -> None:
    path = write(tmp_path / "notepad.txt", "héllo\r\nwörld\r\n".encode("utf-16"))
    assert found(list(walk([tmp_path])), tmp_path) == ["notepad.txt"]
    assert read_text(path) == ("héllo\nwörld\n", "decoded as UTF-16")


def test_newlines_are_normalised(tmp_path: Path) -> None:
    path = write(tmp_path / "mixed.txt", b"windows\r\nold mac\runix\n\r\n")
    assert read_text(path) == ("windows\nold mac\nunix\n\n", None)


def test_file_turned_binary_after_the_walk_raises(tmp_path: Path) -> None:
    path = write(tmp_path / "notes.md", "text for now\n")
    [item] = walk([tmp_path])
    assert isinstance(item, Found)
    path.write_bytes(b"\x00\x01\x02\x03" * 100)
    with pytest.raises(IngestError, match="^binary file$"):
        read_text(item.path)


# --- PDFs ---------------------------------------------------------------------------------------------------


def test_pdf_text_is_extracted_page_by_page(tmp_path: Path) -> None:
    path = write(tmp_path / "report.pdf", make_pdf(["Hello page one", "Second page"]))
    assert found(list(walk([tmp_path])), tmp_path) == ["report.pdf"]
    assert read_text(path) == ("Hello page one\n\nSecond page", None)


def test_broken_pdf_raises_one_line_error(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.pdf", b"%PDF-1.4\nthis is not really a pdf\n")
    with pytest.raises(IngestError, match="^broken PDF: ") as caught:
        read_text(path)
    assert "\n" not in str(caught.value)


def test_truncated_pdf_raises(tmp_path: Path) -> None:
    data = make_pdf(["Hello page one"])
    path = write(tmp_path / "cut.pdf", data[: len(data) // 3])
    with pytest.raises(IngestError, match="^(broken PDF: |PDF has no text)"):
        read_text(path)


def test_password_protected_pdf_raises(tmp_path: Path) -> None:
    path = write(tmp_path / "locked.pdf", encrypt_pdf(make_pdf(["Top secret"]), "secret"))
    with pytest.raises(IngestError, match="^encrypted PDF; it needs a password"):
        read_text(path)


def test_pdf_encrypted_without_a_user_password_is_read(tmp_path: Path) -> None:
    path = write(tmp_path / "restricted.pdf", encrypt_pdf(make_pdf(["Readable anyway"]), ""))
    assert read_text(path) == ("Readable anyway", None)


def test_pdf_without_text_raises(tmp_path: Path) -> None:
    path = write(tmp_path / "scan.pdf", make_pdf([""]))
    with pytest.raises(IngestError, match="^PDF has no text to extract"):
        read_text(path)


# --- speed and import cost ----------------------------------------------------------------------------------


def test_walking_10000_small_files_is_fast(tmp_path: Path) -> None:
    for folder in range(100):
        base = tmp_path / f"d{folder:03}"
        base.mkdir()
        for i in range(100):
            (base / f"note{i:03}.md").write_bytes(b"# a note\n\nsome text of a note\n" * 4)
    write(tmp_path / ".gitignore", "*.tmp\n!keep.tmp\nbuild/\n")
    start = time.perf_counter()
    count = sum(isinstance(item, Found) for item in walk([tmp_path]))
    elapsed = time.perf_counter() - start
    assert count == 10_000
    assert elapsed < 2.0  # about 0.2 s on a laptop; generous for loaded CI machines


def test_import_is_light() -> None:
    code = ("import sys, memchat.ingest.files; "
            "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'transformers', 'pypdf', 'pathspec', 'memchat'))))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            check=True)
    assert result.stdout.split() == ["memchat", "memchat.errors", "memchat.ingest", "memchat.ingest.files"]
