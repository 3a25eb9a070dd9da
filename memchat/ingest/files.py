"""Finding and reading the files `memchat ingest` takes.

`walk` turns the paths a user typed into a stream of files to ingest (`Found`) and paths left out with a
reason the user can act on (`Skipped`); `read_text` turns one found file into text. Everything here is
decided by what a file contains, not by its name: a binary file called notes.md is skipped, a PDF
saved without an extension is read.

This module sits in the interfaces layer: it imports nothing from the rest of memchat and nothing heavy
at import time (`pathspec` and `pypdf` are imported on first use), so `memchat --help` stays fast.
"""

from __future__ import annotations

import codecs
import errno
import io
import os
import re
import stat
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from memchat.errors import MemchatError

if TYPE_CHECKING:
    from pathspec import GitIgnoreSpec

# Notes, documents and source files are almost always well under 1 MB. A 10 MB text file is already
# some 2.5 million tokens, more than a person reads in weeks; files that large are nearly always logs,
# dumps or data exports that would crowd the memory with noise. The limit also bounds what `read_text`
# holds in RAM, since it reads a file in one go. It matches the CLI's `--max-size 10` (MB = MiB).
DEFAULT_MAX_BYTES = 10 * 1024 * 1024

# How much of a file is looked at to tell text from binary: enough to see past any header, small enough
# that classifying 10,000 files costs no more than listing them.
SNIFF_BYTES = 8 * 1024

# A PDF starts with this, whatever the file is called; it is read through pypdf, not decoded as text.
PDF_MAGIC = b"%PDF-"

# Share of control characters above which a sample is binary rather than text. Text has none or a few
# (a form feed, a DOS end-of-file mark); compiled and compressed data that happens to have no NUL byte
# still has about 20% once decoded as latin-1, which accepts any byte.
CONTROL_SHARE_LIMIT = 0.10

# Control characters that do not occur in text. Tab, newlines, vertical tab, form feed, backspace
# (man-page overstrike) and escape (coloured logs) are left out on purpose.
_CONTROL = re.compile("[\x00-\x07\x0e-\x1a\x1c-\x1f\x7f-\x9f]")

# Tried in order; latin-1 decodes every byte, so the list always ends with an answer. The note tells the
# user that the file was not UTF-8 and how it was read, so mojibake can be traced to its cause.
_TEXT_ENCODINGS: tuple[tuple[str, str | None], ...] = (
    ("utf-8-sig", None),  # UTF-8 with or without a byte-order mark
    ("cp1252", "decoded as cp1252"),
    ("latin-1", "decoded as latin-1"),
)
# Windows Notepad and PowerShell's `>` write UTF-16; its byte-order mark is unambiguous, and without this
# such a file would look binary (every other byte of ASCII text is NUL).
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)

# Open without blocking: a FIFO that turned up where a file was listed must not hang the ingest.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)


class IngestError(MemchatError):
    """A file that cannot be read, with a one-line reason (no path: the caller shows the path)."""


@dataclass(frozen=True)
class Found:
    """A file to ingest."""

    path: Path  # absolute, symlinks resolved: one file has one name in the journal however it was reached
    size: int  # bytes, as seen by the walk


@dataclass(frozen=True)
class Skipped:
    """A path that will not be ingested, with a one-line reason a user understands."""

    path: Path  # absolute, symlinks kept: the name the user sees in their folder
    reason: str


# --- walking ---------------------------------------------------------------------------------------------


def walk(paths: Sequence[str | Path], max_bytes: int = DEFAULT_MAX_BYTES) -> Iterator[Found | Skipped]:
    """Yield every file under `paths` to ingest, and every path left out with the reason why.

    The order is stable: the given paths in the order given, each folder's entries sorted by name (code
    point order, so the same on every machine and locale) and walked depth-first, so a folder's files
    come before its next sibling. Nothing raises for a bad path; it comes back as a `Skipped`.

    A path given explicitly is taken even when it is hidden; inside a walked folder, hidden entries
    (names starting with "."; this covers .git/) and entries excluded by a .gitignore come back as
    `Skipped(path, "hidden")` and `Skipped(path, "excluded by .gitignore")` once, without descending.
    Only .gitignore files inside the walked folders count, not those above them or git's global ones.

    Symlinks are followed; a folder that is its own ancestor is reported as a loop instead of walked.
    A file or folder reached a second time (through a symlink, or because it was given twice) is passed
    over silently, so each file is yielded once.
    """
    walker = _Walker(max_bytes)
    for given in paths:
        yield from walker.given(given)


@dataclass(frozen=True)
class _Ignore:
    """The patterns of one .gitignore file, which apply to paths below the folder it sits in."""

    prefix: str  # the folder, as walked, ending in a separator
    spec: GitIgnoreSpec


@dataclass(frozen=True)
class _Folder:
    """A folder being walked."""

    path: str  # as walked: absolute, symlinks kept; what .gitignore patterns are matched against
    real: str  # symlinks resolved: Found paths are built from it without a realpath() call per file
    ignores: tuple[_Ignore, ...]  # the .gitignore files that apply here, outermost first
    ancestors: frozenset[tuple[int, int]]  # (st_dev, st_ino) of this folder and those above it in the walk


# A folder ready to walk: itself and an iterator over its entries, sorted by name.
_Opened = tuple[_Folder, Iterator[os.DirEntry]]


class _Walker:
    """The state one `walk` call keeps so that every file comes out once and no loop is walked."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.seen_files: set[tuple[int, int]] = set()
        self.seen_folders: set[tuple[int, int]] = set()

    def given(self, raw: str | Path) -> Iterator[Found | Skipped]:
        """One path as the user gave it: a file is taken whatever its name, a folder is walked."""
        path = os.path.abspath(os.path.expanduser(os.fspath(raw)))
        try:
            st = os.stat(path)
        except OSError as error:
            yield Skipped(Path(path), _stat_problem(path, error))
            return
        real = os.path.realpath(path)
        if stat.S_ISDIR(st.st_mode):
            yield from self.tree(path, real, st)
        else:
            yield from _optional(self.file(path, real, st))

    def tree(self, path: str, real: str, st: os.stat_result) -> Iterator[Found | Skipped]:
        """Walk one folder depth-first with a stack, so deep trees cannot exhaust Python's recursion."""
        if _identity(st) in self.seen_folders:
            return
        opened = yield from self.enter(path, real, st, None)
        if opened is None:
            return
        stack = [opened]
        while stack:
            folder, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                stack.pop()
                continue
            child = yield from self.entry(folder, entry)
            if child is not None:
                stack.append(child)

    def enter(self, path: str, real: str, st: os.stat_result,
              parent: _Folder | None) -> Generator[Skipped, None, _Opened | None]:
        """List a folder and load its .gitignore; returns the folder and its sorted entries, or None."""
        self.seen_folders.add(_identity(st))
        try:
            with os.scandir(path) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as error:
            yield Skipped(Path(path), _unreadable(error))
            return None
        ignores = parent.ignores if parent else ()
        gitignore = next((entry for entry in entries if entry.name == ".gitignore"), None)
        if gitignore is not None:
            try:
                prefix = path if path.endswith(os.sep) else path + os.sep
                ignores = (*ignores, _Ignore(prefix, _load_gitignore(gitignore.path)))
            except OSError as error:
                yield Skipped(Path(gitignore.path), _unreadable(error))
        ancestors = (parent.ancestors if parent else frozenset()) | {_identity(st)}
        return _Folder(path, real, ignores, ancestors), iter(entries)

    def entry(self, folder: _Folder,
              entry: os.DirEntry[str]) -> Generator[Found | Skipped, None, _Opened | None]:
        """One entry of a walked folder; returns the opened folder when the walk should descend into it."""
        if entry.name.startswith("."):
            yield Skipped(Path(entry.path), "hidden")
            return None
        if folder.ignores and _ignored(folder.ignores, entry.path, _is_dir(entry)):
            yield Skipped(Path(entry.path), "excluded by .gitignore")
            return None
        try:
            st = entry.stat()  # follows symlinks
        except OSError as error:
            yield Skipped(Path(entry.path), _stat_problem(entry.path, error))
            return None
        link = _is_symlink(entry)
        real = os.path.realpath(entry.path) if link else os.path.join(folder.real, entry.name)
        if not stat.S_ISDIR(st.st_mode):
            yield from _optional(self.file(entry.path, real, st))
            return None
        if _identity(st) in folder.ancestors:
            loop = "symlink loop" if link else "folder loop (it contains itself)"
            yield Skipped(Path(entry.path), loop)
            return None
        if _identity(st) in self.seen_folders:
            return None
        return (yield from self.enter(entry.path, real, st, folder))

    def file(self, path: str, real: str, st: os.stat_result) -> Found | Skipped | None:
        """Classify one file by its size and first bytes; None when it was already yielded once."""
        if not stat.S_ISREG(st.st_mode):
            return Skipped(Path(path), "not a regular file")
        if _identity(st) in self.seen_files:
            return None
        self.seen_files.add(_identity(st))
        if st.st_size == 0:
            return Skipped(Path(path), "empty")
        if st.st_size > self.max_bytes:
            return Skipped(Path(path), _too_large(st.st_size, self.max_bytes))
        try:
            head = _read_head(path)
        except OSError as error:
            return Skipped(Path(path), _unreadable(error))
        if not head:
            return Skipped(Path(path), "empty")
        if not head.startswith(PDF_MAGIC) and _is_binary(head, final=len(head) >= st.st_size):
            return Skipped(Path(path), "binary file")
        return Found(Path(real), st.st_size)


def _optional(item: Found | Skipped | None) -> Iterator[Found | Skipped]:
    """Yield the item unless it is None (a file yielded before)."""
    if item is not None:
        yield item


def _identity(st: os.stat_result) -> tuple[int, int]:
    """What makes a file or folder the same one however it is reached (a realpath without the syscalls)."""
    return st.st_dev, st.st_ino


def _is_dir(entry: os.DirEntry[str]) -> bool:
    """Whether an entry is a folder (following symlinks), False when that cannot be told."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _is_symlink(entry: os.DirEntry[str]) -> bool:
    """Whether an entry is a symlink, False when that cannot be told."""
    try:
        return entry.is_symlink()
    except OSError:
        return False


def _load_gitignore(path: str) -> GitIgnoreSpec:
    """Compile a .gitignore; lines git would reject are dropped one by one, as git does."""
    from pathspec import GitIgnoreSpec

    # surrogateescape: patterns must match file names that are not valid UTF-8 the way os.scandir spells them
    with open(path, encoding="utf-8-sig", errors="surrogateescape") as file:
        lines = file.read().splitlines()
    try:
        return GitIgnoreSpec.from_lines(lines)
    except ValueError:
        return GitIgnoreSpec.from_lines([line for line in lines if _valid_pattern(line)])


def _valid_pattern(line: str) -> bool:
    """Whether pathspec accepts one .gitignore line."""
    from pathspec import GitIgnoreSpec

    try:
        GitIgnoreSpec.from_lines([line])
    except ValueError:
        return False
    return True


def _ignored(ignores: tuple[_Ignore, ...], path: str, is_dir: bool) -> bool:
    """Whether git would ignore `path`: the innermost .gitignore with a matching pattern decides.

    Folders are matched with a trailing slash so that patterns like `build/` apply to folders only.
    """
    for ignore in reversed(ignores):
        relative = path[len(ignore.prefix):].replace(os.sep, "/") + ("/" if is_dir else "")
        verdict = ignore.spec.check_file(relative).include
        if verdict is not None:  # True: excluded; False: re-included by a `!` pattern
            return verdict
    return False


def _read_head(path: str) -> bytes:
    """The first SNIFF_BYTES of a file, without reading the rest."""
    fd = os.open(path, _OPEN_FLAGS)
    try:
        return os.read(fd, SNIFF_BYTES)
    finally:
        os.close(fd)


# --- telling text from binary, and decoding ---------------------------------------------------------------


def _is_binary(sample: bytes, final: bool) -> bool:
    """Whether a sample of a file is binary: NUL bytes, or too many control characters once decoded.

    Decoding cannot fail outright (latin-1 takes any byte), so what decoding cannot tell, the share of
    control characters does. `final` says the sample is the whole file; otherwise a multi-byte character
    cut off at its end is not an error.
    """
    if b"\x00" in sample and not sample.startswith(_UTF16_BOMS):
        return True
    text, _ = _decode(sample, final)
    return "\x00" in text or len(_CONTROL.findall(text)) > CONTROL_SHARE_LIMIT * len(text)


def _decode(data: bytes, final: bool = True) -> tuple[str, str | None]:
    """Decode bytes as UTF-16 (by its byte-order mark), else UTF-8, else cp1252, else latin-1.

    Returns the text and a note naming the decoding when it was not UTF-8. Characters are never
    replaced: a decoding either takes every byte or the next one is tried.
    """
    if data.startswith(_UTF16_BOMS):
        try:
            return _decode_as("utf-16", data, final), "decoded as UTF-16"
        except UnicodeDecodeError:
            pass
    for encoding, note in _TEXT_ENCODINGS:
        try:
            return _decode_as(encoding, data, final), note
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes every byte")  # pragma: no cover


def _decode_as(encoding: str, data: bytes, final: bool) -> str:
    """Decode strictly; with `final` False a character cut off at the end is left out, not an error."""
    return codecs.getincrementaldecoder(encoding)(errors="strict").decode(data, final)


def _normalise_newlines(text: str) -> str:
    """Windows (CRLF) and old Mac (CR) line ends become \\n."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


# --- reading ----------------------------------------------------------------------------------------------


def read_text(path: Path, *, max_bytes: int | None = None) -> tuple[str, str | None]:
    """The text of one file found by `walk`, and a note on how it was decoded (None for plain UTF-8).

    PDFs are read through pypdf, their pages joined with blank lines. Other files are decoded as in
    `_decode`, with newlines normalised to \\n. The file is read in one go; pass `max_bytes` to refuse a
    file that grew past the limit since it was walked. Raises IngestError with a one-line reason.
    """
    data = _read_all(os.fspath(path), max_bytes)
    if data.startswith(PDF_MAGIC):
        return _read_pdf(data), None
    if not data:
        raise IngestError("empty")
    if _is_binary(data[:SNIFF_BYTES], final=len(data) <= SNIFF_BYTES):
        raise IngestError("binary file")
    text, note = _decode(data)
    return _normalise_newlines(text), note


def _read_all(path: str, max_bytes: int | None) -> bytes:
    """A whole regular file's bytes, or IngestError saying why not."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as error:
        raise IngestError(_stat_problem(path, error)) from error
    with os.fdopen(fd, "rb") as file:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IngestError("not a regular file")
        if max_bytes is not None and st.st_size > max_bytes:
            raise IngestError(_too_large(st.st_size, max_bytes))
        try:
            data = file.read() if max_bytes is None else file.read(max_bytes + 1)
        except OSError as error:
            raise IngestError(_unreadable(error)) from error
    if max_bytes is not None and len(data) > max_bytes:  # it grew while being read
        raise IngestError(_too_large(len(data), max_bytes))
    return data


def _read_pdf(data: bytes) -> str:
    """The text of every page of a PDF, joined with blank lines."""
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
        encrypted = reader.is_encrypted
    except Exception as error:  # pypdf reports a broken file with many exception types
        raise IngestError(f"broken PDF: {_one_line(error)}") from error
    if encrypted:
        _unlock(reader)
    try:
        pages = [page.extract_text() or "" for page in reader.pages]
    except Exception as error:
        raise IngestError(f"broken PDF: {_one_line(error)}") from error
    text = "\n\n".join(page for page in (_normalise_newlines(p).strip() for p in pages) if page)
    if not text:
        raise IngestError("PDF has no text to extract (scanned pages?)")
    return text


def _unlock(reader) -> None:
    """Open an encrypted PDF that needs no password to read (many only restrict printing or editing)."""
    try:
        unlocked = reader.decrypt("")
    except Exception as error:  # e.g. AES needs the `cryptography` package
        raise IngestError(f"encrypted PDF: {_one_line(error)}") from error
    if not unlocked:
        raise IngestError("encrypted PDF; it needs a password, save a copy without one to ingest it")


# --- reasons ------------------------------------------------------------------------------------------------


def _stat_problem(path: str, error: OSError) -> str:
    """Why a path could not be looked at, in words."""
    if isinstance(error, (FileNotFoundError, NotADirectoryError)):
        return "broken symlink: its target does not exist" if os.path.islink(path) else "not found"
    if error.errno == errno.ELOOP:
        return "symlink loop"
    return _unreadable(error)


def _unreadable(error: OSError) -> str:
    """"unreadable: permission denied" and the like."""
    reason = os.strerror(error.errno) if error.errno else _one_line(error)
    return f"unreadable: {reason[:1].lower()}{reason[1:]}"


def _too_large(size: int, limit: int) -> str:
    """Names the size, the limit and the option that raises it."""
    shown, limit_shown = _human(size), _human(limit).replace(".0 ", " ")
    if shown.replace(".0 ", " ") == limit_shown:  # rounding would hide the difference
        shown, limit_shown = f"{size:,} bytes", f"{limit:,} bytes"
    return f"larger than {limit_shown} ({shown}); raise --max-size to include it"


def _human(size: int) -> str:
    """'512 bytes', '10.0 MB', '2.0 GB' (units of 1024, as --max-size counts them)."""
    if size < 1024:
        return f"{size} bytes"
    value = float(size)
    for unit in ("KB", "MB", "GB", "TB"):
        value /= 1024
        if value < 1024 or unit == "TB":
            break
    return f"{value:.1f} {unit}"


def _one_line(error: BaseException) -> str:
    """An exception as one short line: its first line of text, or its type."""
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:200]
