"""Convert the paper's CIFAR-10 model between diffusers' UNet2DModel format and this project's (both ways).

    python -m ddpm convert --from-diffusers ddpm-cifar10-32/ --out cifar10-official.pt
    python -m ddpm convert --to-diffusers --run cifar10-official.pt --out ddpm-cifar10-32-again/
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ddpm._util import shorten
from ddpm.checkpoints import load_run
from ddpm.cli.common import UsageError, check_output
from ddpm.convert import WEIGHT_NAMES, convert_to_run, to_diffusers
from ddpm.nn.unet import UNet

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m ddpm convert``."""
    p.add_argument("--from-diffusers", metavar="PATH",
                   help="a diffusers UNet2DModel folder (config.json + weights) or its weights file")
    p.add_argument("--to-diffusers", action="store_true", help="convert --run to a diffusers model folder --out")
    p.add_argument("--run", metavar="RUN_OR_PT", help="with --to-diffusers: a run folder or exported .pt")
    p.add_argument("--out", required=True,
                   help="the exported .pt to write (--from-diffusers), or a folder (--to-diffusers)")


def run(args: argparse.Namespace) -> int:
    """Run one conversion and print one line saying what was written."""
    if bool(args.from_diffusers) == bool(args.to_diffusers):
        raise UsageError("give exactly one of --from-diffusers PATH or --to-diffusers --run RUN_OR_PT")
    if args.from_diffusers:
        check_output(args.out, (".pt",), "--out")
        path = convert_to_run(args.from_diffusers, args.out)
        print(f"wrote {path}: the diffusers U-Net {args.from_diffusers} as a ddpm-cifar10 model "
              f"(next: python -m ddpm sample --run {path})")
        return 0
    if not args.run:
        raise UsageError("--to-diffusers needs --run RUN_OR_PT (a run folder or an exported .pt)")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        what = "a file" if not out.is_dir() else "a folder that is not empty"
        raise UsageError(f"--out {shorten(out, 160)} is {what}; give a new folder name (ddpm does not replace what "
                         f"a folder holds)")
    loaded = load_run(args.run)
    if not isinstance(loaded.model, UNet):
        raise ValueError(f"{args.run} is not a U-Net model (preset {loaded.config.preset!r})")
    out = to_diffusers(loaded.model, args.out)
    print(f"wrote {out}: config.json and {WEIGHT_NAMES[0]} of {loaded.path} (EMA weights, step {loaded.step})")
    return 0
