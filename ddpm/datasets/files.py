"""Checksums and downloads: files are checked before they are trusted.

md5 checks are remembered per process (a file that changes on disk is checked again). A download
streams into a temporary file next to its destination, is verified, then renamed: an interrupted or
corrupt download never leaves a file behind. Every failure is a ``DownloadError`` listing each mirror
and why it failed.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from ddpm.datasets.base import DatasetError, DownloadError

__all__ = ["download", "md5_file"]

# md5 checks already passed in this process: (path, size, mtime_ns, md5). A file that changes on disk
# changes its size or mtime and is checked again.
_VERIFIED: set[tuple[str, int, int, str]] = set()


def _md5() -> Any:
    return hashlib.md5(usedforsecurity=False)  # a checksum against corruption, not a security claim


def _md5_bytes(data: bytes) -> str:
    h = _md5()
    h.update(data)
    return h.hexdigest()


def md5_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex md5 of a file, read in chunks."""
    h = _md5()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def _cache_key(path: Path, md5: str) -> tuple[str, int, int, str]:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, md5)


def _is_verified(path: Path, md5: str) -> bool:
    return _cache_key(path, md5) in _VERIFIED


def _mark_verified(path: Path, md5: str) -> None:
    _VERIFIED.add(_cache_key(path, md5))


def _check_file_md5(path: Path, md5: str, fix: str) -> None:
    """md5 of the file on disk must be ``md5`` (cached per process)."""
    if _is_verified(path, md5):
        return
    got = md5_file(path)
    if got != md5:
        raise DatasetError(f"{path}: md5 mismatch (got {got}, expected {md5}); the file is corrupt. {fix}")
    _mark_verified(path, md5)


def _copy_md5(src: IO[bytes], out: IO[bytes], chunk_size: int = 1 << 20,
              on_chunk: Callable[[int], Any] | None = None) -> tuple[str, int]:
    """Copy ``src`` into ``out`` chunk by chunk -> (hex md5 of the bytes, number of bytes)."""
    h = _md5()
    received = 0
    while chunk := src.read(chunk_size):
        out.write(chunk)
        h.update(chunk)
        received += len(chunk)
        if on_chunk is not None:
            on_chunk(len(chunk))
    return h.hexdigest(), received


def _write_verified(dest: Path, fill: Callable[[IO[bytes]], str | None]) -> str | None:
    """Let ``fill`` write a temporary file next to ``dest``; rename it to ``dest`` only if ``fill``
    returns None (the bytes are good), else return its reason. The temporary file never stays behind."""
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            reason = fill(out)
        if reason is None:
            os.replace(tmp, dest)  # atomic: dest is the old file or the complete new one
        return reason
    finally:
        tmp.unlink(missing_ok=True)  # also on KeyboardInterrupt: never leave a partial file


def _short_reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"unreachable ({exc.reason})"
    return f"{type(exc).__name__}: {exc}"


def download(
    urls: Sequence[str],
    dest: str | os.PathLike,
    md5: str | None,
    *,
    progress: bool = True,
    timeout: float = 30.0,
    chunk_size: int = 1 << 20,
) -> Path:
    """Download one file to ``dest``, trying each mirror in ``urls`` in order.

    The bytes stream into a temporary file next to ``dest`` (with a tqdm progress bar), their md5 is
    computed on the way, and only a complete, verified file is renamed to ``dest`` (os.replace is
    atomic), so ``dest`` is either absent, the old file, or the good new one: never a partial file.
    If ``dest`` already exists with the right md5 nothing is downloaded. ``md5=None`` skips the check
    (for files without a published checksum). Raises DownloadError listing each URL and why it failed.
    """
    dest = Path(dest)
    if dest.is_file() and md5 is not None and md5_file(dest) == md5:
        _mark_verified(dest, md5)
        return dest
    if not urls:
        raise DownloadError(f"No URL to download {dest.name} from; place the file at {dest.resolve()}.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures: list[tuple[str, str]] = []
    for url in urls:
        fill = functools.partial(_stream, url, md5=md5, desc=dest.name, progress=progress, timeout=timeout,
                                 chunk_size=chunk_size)
        reason = _write_verified(dest, fill)
        if reason is None:
            if md5 is not None:
                _mark_verified(dest, md5)
            return dest
        failures.append((url, reason))
    lines = "\n".join(f"  {url}: {reason}" for url, reason in failures)
    checksum = f" (md5 {md5})" if md5 else ""
    raise DownloadError(
        f"Could not download {dest.name}; every mirror failed:\n{lines}\n"
        f"If this machine is offline, download it elsewhere from one of the URLs above and place it at "
        f"{dest.resolve()}{checksum}.",
        failures,
    )


def _stream(url: str, out: IO[bytes], md5: str | None, *, desc: str, progress: bool,
            timeout: float, chunk_size: int) -> str | None:
    """Copy ``url`` into ``out``; None on success, else why not: the mirror failed (unreachable, an HTTP
    error) or its bytes are not the expected file."""
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "ddpm-educational/0.1 (python urllib)"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                      disable=not progress, leave=False) as bar:
                got, received = _copy_md5(response, out, chunk_size, on_chunk=bar.update)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return _short_reason(exc)
    if total is not None and received != total:
        return f"incomplete download ({received} of {total} bytes)"
    if md5 is not None and got != md5:
        return f"md5 mismatch (got {got}, expected {md5}): the mirror served a different file"
    return None


def _fetch_all(files: Sequence[tuple[Path, Sequence[str], str | None]], what: str, progress: bool) -> None:
    """Download several files; if one fails, the error lists every file still to be placed by hand."""
    for i, (dest, urls, md5) in enumerate(files):
        try:
            download(urls, dest, md5, progress=progress)
        except DownloadError as exc:
            todo = "\n".join(
                f"  {d.resolve()}  from {u[0] if u else '?'}" + (f"  (md5 {m})" if m else "")
                for d, u, m in files[i:]
            )
            failed = "\n".join(f"  {url}: {reason}" for url, reason in exc.failures)
            raise DownloadError(
                f"Could not download {what}: every mirror failed for {dest.name}:\n{failed}\n"
                f"If this machine is offline, download these files elsewhere and place them here:\n{todo}",
                exc.failures,
            ) from exc
