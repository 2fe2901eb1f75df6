"""Small utilities every layer may use: typed modes, thread count, eval mode, config dicts (files: ddpm._files).

This module imports nothing else of ddpm, so that any module can import it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import threading
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["check_mode", "check_threads", "set_threads", "num_threads", "eval_mode", "shorten", "select_condition",
           "stop_on_sigint", "dataclass_to_dict", "dataclass_from_dict"]


def check_mode(value: str, allowed: tuple[str, ...], what: str) -> str:
    """Typed modes are exhaustive: an unknown value raises instead of silently meaning a default."""
    if value not in allowed:
        raise ValueError(f"unknown {what} {shorten(value)!r}; expected one of: {', '.join(allowed)}")
    return value


def dataclass_to_dict(obj) -> dict[str, Any]:
    """A frozen config dataclass as a plain JSON-able dict (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(obj).items()}


def dataclass_from_dict(cls, d: dict[str, Any]):
    """The inverse of dataclass_to_dict: missing keys take the defaults; unknown keys, and values of the wrong type
    (a string where a number goes, a NaN or an infinity, a number where a list goes), raise, naming the field. This
    is where every config read from a file (config.json, a checkpoint) is checked."""
    if not isinstance(d, dict):
        raise ValueError(f"a {cls.__name__} must be a dict of its fields, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; valid fields: {sorted(known)}")
    hints = typing.get_type_hints(cls)
    for key, value in d.items():
        if not _is_a(value, hints[key]):
            raise ValueError(f"{cls.__name__}.{key} = {shorten(repr(value), 40)}: expected a {_named(hints[key])}")
    return cls(**d)


def _is_a(value, hint) -> bool:
    """Whether a value read from JSON fits a field's type hint (bool is not a number; floats are finite)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_is_a(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_is_a(v, a) for v, a in zip(value, args, strict=True))
        return all(_is_a(v, args[0]) for v in value) if args else True
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    return True  # a type this check does not know: the dataclass's own __post_init__ decides


_NAMES = {float: "finite number", int: "whole number", bool: "true or false", str: "string", type(None): "null"}


def _named(hint) -> str:
    """A type hint in words: "finite number", "whole number or null", "list of whole numbers", ..."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_named(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (tuple, list):
        return f"list of {_named(args[0])}s" if args else "list"
    return _NAMES.get(hint, getattr(hint, "__name__", str(hint)))


def shorten(text, limit: int = 60) -> str:
    """str(text) cut to ``limit`` characters (error messages echo user input, but never 10 KB of it)."""
    text = str(text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_threads(n: int | None) -> int | None:
    """None (torch's choice) or a positive thread count; anything else raises."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"the number of threads must be a positive integer, got {n!r}")
    return n


def set_threads(n: int | None) -> None:
    """Use n intra-op CPU threads from now on (None: leave torch's choice)."""
    if check_threads(n) is not None:
        torch.set_num_threads(n)


@contextlib.contextmanager
def num_threads(n: int | None) -> Iterator[None]:
    """Use n intra-op threads inside the block (None: leave as is), then restore the previous count."""
    old = torch.get_num_threads()
    set_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def eval_mode(model) -> Iterator[None]:
    """Put an nn.Module in eval mode (no condition dropout, no dropout) inside the block, then restore it.
    Any other callable passes through untouched."""
    if not isinstance(model, nn.Module):
        yield
        return
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def select_condition(cond, idx: torch.Tensor):
    """The conditions of the items idx: a tensor is indexed, a list of prompts picked, None stays None."""
    if cond is None:
        return None
    if isinstance(cond, torch.Tensor):
        return cond[idx.to(cond.device)]
    return [cond[i] for i in idx.tolist()]


@contextlib.contextmanager
def stop_on_sigint(request_stop: Callable[[], None]) -> Iterator[None]:
    """Inside the block, Ctrl-C (SIGINT) calls ``request_stop()`` instead of raising KeyboardInterrupt, so a
    loop can stop at a clean boundary; a second Ctrl-C raises as usual. Outside the main thread (where no
    signal handler can be installed) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        request_stop()
        signal.signal(signal.SIGINT, previous)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
