"""The command line: python -m ddpm {train, sample, edit, export, convert, visualize, evaluate, bench, cascade, unclip}.

One thin module per command (``add_arguments(p)`` and ``run(args)`` over importable functions), and
what they share in ddpm.cli.common. A system's command lives in its folder (ddpm/pipelines/<system>/cli.py, with
its COMMAND name) and is found through ddpm.pipelines.base.FOLDERS. Bad input ends with one line on stderr
and exit code 2, never a traceback: flags are checked at parse time, output paths before any work, and the
errors of the library (unknown preset, class out of range, unknown words in a prompt, a missing checkpoint, a
locked run, a full disk) are printed as they are.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import importlib.util
import sys

from ddpm._files import LockError
from ddpm._util import set_threads, shorten
from ddpm.checkpoints import CheckpointError
from ddpm.cli import bench, edit, evaluate, export, sample, train, visualize
from ddpm.cli import convert as convert_cmd
from ddpm.cli.common import UsageError, resolve_condition, resolve_run
from ddpm.datasets import DatasetError
from ddpm.pipelines.base import FOLDERS
from ddpm.runtime import keep_freed_memory
from ddpm.training import TrainingError

__all__ = ["main", "build_parser", "resolve_condition", "resolve_run", "set_threads", "COMMANDS", "UsageError",
           "all_commands"]

COMMANDS = {  # name: (module, help)
    "train": (train, "train a model (default: the mnist preset on the shipped MNIST)"),
    "sample": (sample, "generate images from a trained run"),
    "edit": (edit, "edit real images: SDEdit (--strength), inpainting (--mask), DDIM inversion (--invert)"),
    "export": (export, "write only the EMA weights + config of a run (small file)"),
    "convert": (convert_cmd, "convert the paper's CIFAR-10 model between diffusers' format and this project's"),
    "visualize": (visualize, "write figures: forward, schedules, reverse, ..."),
    "evaluate": (evaluate, "bits/dim and sample quality of a run"),
    "bench": (bench, "training and sampling speed on this machine"),
}

# the spellings of one release ago: sample --refine/--unclip/--variations and evaluate --refine moved to commands
MOVED = {("sample", "--refine"): "python -m ddpm cascade (--sr SR_RUN for the SR model, --from-test)",
         ("sample", "--unclip"): "python -m ddpm unclip --prompt ...",
         ("sample", "--variations"): "python -m ddpm unclip --variations DIGIT",
         ("evaluate", "--refine"): "python -m ddpm cascade --evaluate [--aug-level 0,0.1,0.3]",
         ("evaluate", "--prior"): "python -m ddpm unclip --evaluate --prior PRIOR"}
MAX_ERROR = 300  # characters of an error line


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: 'python -m ddpm sample: error: argument --n: ... (see --help)'."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {shorten(message, MAX_ERROR)} (see {self.prog} --help)\n")


def all_commands() -> dict:
    """COMMANDS, then each system's own command (its folder's cli.py: python -m ddpm cascade, ... unclip)."""
    found = dict(COMMANDS)
    for folder in FOLDERS:
        if importlib.util.find_spec(f"{folder}.cli") is not None:
            module = importlib.import_module(f"{folder}.cli")
            found[module.COMMAND[0]] = (module, module.COMMAND[1])
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m ddpm", description="An educational DDPM in PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command", parser_class=_Parser)
    for name, (module, help_text) in all_commands().items():
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or "").strip())
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    return parser


def _os_error(e: OSError) -> str:
    where = e.filename if e.filename is not None else "a file"
    if e.errno == errno.ENOSPC:
        return f"no space left on the disk while writing {where}; free some space (earlier checkpoints are intact)"
    return f"cannot write or read {where}: {e.strerror or e}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for (command, flag), now in MOVED.items():
        if argv[:1] == [command] and any(a == flag or a.startswith(flag + "=") for a in argv[1:]):
            print(f"error: {command} {flag} has moved: use {now}", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # every command allocates the same tensors over and over: reuse their pages (docs/cpu.md)
    try:
        return args.func(args) or 0
    except (UsageError, CheckpointError, DatasetError, TrainingError, LockError, ValueError) as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"error: {shorten(message, MAX_ERROR)}", file=sys.stderr)
        return 2
    except OSError as e:  # FileNotFoundError, PermissionError, a full disk, ...
        print(f"error: {shorten(_os_error(e), MAX_ERROR)}", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: out of memory; give a smaller --n, --batch-size or --sample-batch", file=sys.stderr)
        return 2
    except RuntimeError as e:  # torch's allocators: the estimate of ddpm.memory could not see this one coming
        if "allocate" not in str(e) and "out of memory" not in str(e):
            raise
        print(f"error: out of memory ({shorten(str(e).splitlines()[0], 120)}); give a smaller --n, --batch-size or "
              f"--sample-batch", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
