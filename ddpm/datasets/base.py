"""What every dataset module shares: the error types, the default data folder and the split check."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["DEFAULT_ROOT", "DatasetError", "DownloadError"]


class DatasetError(ValueError):
    """A dataset file is missing, corrupt, unsafe or could not be downloaded.

    The message names the file, says what was wrong and how to fix it.
    """


class DownloadError(DatasetError):
    """Every mirror failed. ``failures`` holds one ``(url, reason)`` per attempt."""

    def __init__(self, message: str, failures: Sequence[tuple[str, str]] = ()):
        super().__init__(message)
        self.failures = list(failures)


def _default_root() -> Path:
    """The repository's ``data/`` folder when running from a checkout, else ``./data``."""
    repo_data = Path(__file__).resolve().parents[2] / "data"  # ddpm/datasets/base.py -> repository root
    return repo_data if repo_data.is_dir() else Path("data")


DEFAULT_ROOT = _default_root()


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise DatasetError(f"unknown split {split!r}; use 'train' or 'test'")
