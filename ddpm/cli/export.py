"""Write only the EMA weights and config of a run: a small file that sample, evaluate and the notebooks load."""

from __future__ import annotations

import argparse

from ddpm.cli.common import UsageError, check_output, guidance_scale
from ddpm.exports import export_model

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run folder or checkpoint .pt")
    p.add_argument("--out", required=True, help="the exported .pt file")
    p.add_argument("--half", action="store_true", help="store weights in float16 (half the size)")
    p.add_argument("--guidance", type=guidance_scale,
                   help="the guidance scale the file samples with by default (its train.guidance), e.g. one that "
                        "evaluate chose after training (default: the run's)")
    p.add_argument("--autoencoder", help="for a latent run: the (exported) autoencoder the file should name from now "
                                         "on; it must hold the weights the run was trained with")
    p.add_argument("--clip", help="for an unCLIP prior or decoder: the (exported) CLIP the file should name from now "
                                  "on; it must hold the weights the run was trained with")


def run(args) -> int:
    out = check_output(args.out, (".pt",), "--out")
    if args.autoencoder is not None and args.clip is not None:
        raise UsageError("give --autoencoder (a latent run's) or --clip (an unCLIP stage's), not both")
    path = export_model(args.run, out, half=args.half, frozen=args.autoencoder or args.clip, guidance=args.guidance)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0
