"""python -m ddpm unclip: text -> CLIP text embedding -> diffusion prior -> image embedding -> decoder -> image, and
variations of a digit (its CLIP image embedding decoded again with other noise).

    python -m ddpm unclip --prompt "a thick slanted seven"   # runs/mnist-prior and runs/mnist-decoder, else the
                                                              # shipped ones
    python -m ddpm unclip --variations 7                     # test digit 7, encoded by CLIP and decoded 8 times
    python -m ddpm unclip --variations my_digit.png --n 16   # a digit of your own (inverted if dark on light)
    python -m ddpm unclip --evaluate                         # the decoder judged: text to image, variations

Each picture is written with a record of what made it, the same name with .json added (samples/x.png.json).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ddpm._files import record_path, write_json
from ddpm._util import shorten
from ddpm.checkpoints import LoadedRun, find_run, load_run
from ddpm.cli.common import (
    UsageError,
    add_device_flags,
    check_output,
    check_prompt,
    check_record,
    guidance_scale,
    nonnegative_int,
    positive_int,
    setup_device,
)
from ddpm.datasets import DatasetError, class_prompts, load_dataset, to_float
from ddpm.datasets import read_digit as read_image_digit
from ddpm.metrics.evaluate import evaluate_run
from ddpm.pipelines.base import Sampling
from ddpm.pipelines.unclip.evaluate import unclip_rows
from ddpm.pipelines.unclip.stage import DECODER_SAMPLING, PRIOR_SAMPLING, VARIATIONS_GUIDANCE, Unclip
from ddpm.samplers import SAMPLERS
from ddpm.viz import save_grid

__all__ = ["add_arguments", "run", "read_digit", "COMMAND"]

COMMAND = ("unclip", "text -> prior -> decoder, and variations of a digit (DALL-E 2's unCLIP in miniature)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", help='a caption, e.g. "a thick slanted seven" (default: the ten class prompts)')
    p.add_argument("--variations", metavar="DIGIT",
                   help="decode a digit's CLIP image embedding --n times (default 8) with different noise: a test "
                        "digit's index (0-9999), or an image file (a light digit on a dark ground, or the reverse)")
    p.add_argument("--evaluate", action="store_true", help="judge the decoder through the prior (text to image) and "
                                                            "its variations, and write a JSON report")
    p.add_argument("--n", type=positive_int, default=None, help="images (default 8 per prompt; --evaluate: 1000)")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--prior", help="the diffusion prior (default runs/mnist-prior, else the shipped one)")
    p.add_argument("--decoder", help="the decoder (default runs/mnist-decoder, else the shipped one)")
    p.add_argument("--prior-sampler", choices=SAMPLERS, default=None,
                   help=f"the prior's sampler (default {PRIOR_SAMPLING.sampler})")
    p.add_argument("--prior-steps", type=positive_int, default=None,
                   help=f"the prior's steps (default {PRIOR_SAMPLING.steps})")
    p.add_argument("--prior-guidance", type=guidance_scale, default=None,
                   help=f"the prior's guidance scale (default {PRIOR_SAMPLING.guidance:g})")
    p.add_argument("--decoder-sampler", choices=SAMPLERS, default=None,
                   help=f"the decoder's sampler (default {DECODER_SAMPLING.sampler} with eta "
                        f"{DECODER_SAMPLING.options['eta']:g}: stochastic steps, which leave no background speckle)")
    p.add_argument("--decoder-steps", type=positive_int, default=None,
                   help=f"the decoder's steps (default {DECODER_SAMPLING.steps})")
    p.add_argument("--guidance", type=guidance_scale, default=None,
                   help=f"the decoder's guidance scale (default {DECODER_SAMPLING.guidance:g}: none; "
                        f"{VARIATIONS_GUIDANCE:g} for --variations)")
    p.add_argument("--out", help="output PNG, or with --evaluate JSON (default: samples/unclip_seed<seed>.png)")
    add_device_flags(p)


def _stage(default: Sampling, sampler: str | None, steps: int | None, guidance: float | None,
           run: LoadedRun, flag: str) -> Sampling:
    """A stage's sampling: its default with what the flags say (Sampling.override)."""
    if steps is not None and steps > run.diffusion.T:
        raise UsageError(f"--{flag}-steps {steps} is more than {run.path}'s T = {run.diffusion.T}")
    return default.override(sampler, steps, guidance)


def load_unclip(args, device) -> Unclip:
    """The Unclip of --prior and --decoder, each sampled as its flags say (--variations: the decoder alone)."""
    runs = {}
    stages = (("prior", "mnist-prior"), ("decoder", "mnist-decoder"))
    for flag, preset in stages[1:] if args.variations is not None else stages:
        runs[flag] = load_run(find_run(getattr(args, flag), preset), device=device)
        if runs[flag].config.kind != flag:
            raise UsageError(f"--{flag} {runs[flag].path} is not an unCLIP {flag} (preset "
                             f"{runs[flag].config.preset!r}); train one with --preset {preset}")
    prior = (_stage(PRIOR_SAMPLING, args.prior_sampler, args.prior_steps, args.prior_guidance, runs["prior"], "prior")
             if "prior" in runs else None)
    decoder = _stage(DECODER_SAMPLING, args.decoder_sampler, args.decoder_steps, args.guidance, runs["decoder"],
                     "decoder")
    variations = args.guidance if args.guidance is not None else VARIATIONS_GUIDANCE
    try:
        return Unclip(runs.get("prior"), runs["decoder"], prior, decoder, variations)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _record(picture: Path, unclip: Unclip, **what) -> Path:
    return write_json(record_path(picture), {**what, **unclip.describe()})


def run(args) -> int:
    device = setup_device(args)
    if args.evaluate and (args.variations is not None or args.prompt is not None):
        raise UsageError("--evaluate judges text to image for every class and the variations of test digits: drop "
                         "--prompt and --variations")
    suffix = ".json" if args.evaluate else ".png"
    name = "unclip_eval" if args.evaluate else "unclip" if args.variations is None else "variations"
    out = check_output(args.out or f"samples/{name}_seed{args.seed}{suffix}", (suffix,), "--out")
    if args.evaluate:
        return _evaluate(args, device, out)
    if args.variations is not None and args.prompt is not None:
        raise UsageError("--variations decodes a digit's own embedding: drop --prompt")
    if args.variations is not None:
        _check_source(args.variations)
    check_record(out)  # a file of the record's name that ddpm did not write is refused, before any work
    unclip = load_unclip(args, device)
    unclip.decoder.check_batch(args.n or 8, fix="give a smaller --n")
    return _variations(args, unclip, out, device) if args.variations is not None else _text(args, unclip, out)


def _text(args, unclip: Unclip, out: Path) -> int:
    """--n images of --prompt (default 8), or 8 (--n) of each class prompt, one row each."""
    if args.prompt is not None:
        check_prompt(args.prompt, unclip.clip.tokenizer, unclip.clip.config.max_prompt_len,
                     "the CLIP's {n} words are the captions' (python -m ddpm sample --vocabulary lists them)")
        prompts, nrow = [args.prompt] * (args.n or 8), 8
    else:
        per, names, dataset = args.n or 8, unclip.decoder.label_names, unclip.decoder.config.data.dataset
        prompts = class_prompts(names, torch.arange(len(names)).repeat_interleave(per), dataset)
        nrow = per
    images, _ = unclip(prompts, torch.Generator(unclip.clip.log_logit_scale.device).manual_seed(args.seed))
    path = save_grid(images, out, nrow=nrow)
    _record(path, unclip, prompts=sorted(set(prompts)), n=len(prompts), seed=args.seed)
    d = unclip.describe()
    print(f"wrote {len(prompts)} unCLIP samples (prior {d['prior']}, {d['prior_sampler']} {d['prior_steps']} steps, "
          f"guidance {d['prior_guidance']:g}; decoder {d['decoder']}, {d['decoder_sampler']} {d['decoder_steps']} "
          f"steps, guidance {d['decoder_guidance']:g}): {path} (and what made it: {record_path(path)})")
    return 0


def _variations(args, unclip: Unclip, out: Path, device) -> int:
    """The digit beside --n decodings of its CLIP image embedding."""
    source, decoder = args.variations, unclip.decoder
    if _is_index(source):
        test = load_dataset(decoder.config.data.dataset, "test", root=decoder.config.data.root)
        if int(source) >= len(test):
            raise UsageError(f"--variations {source}: the test set has digits 0..{len(test) - 1}")
        x = to_float(test.images[int(source)][None])
    else:
        x = read_digit(source, decoder.config.model.image_size)
    n = args.n or 8
    images = unclip.variations(x.to(device), n, torch.Generator(device).manual_seed(args.seed))
    path = save_grid(torch.cat([x.to(images.device), images]), out, nrow=min(n + 1, 9))  # the digit first
    _record(path, unclip, source=source, n=n, seed=args.seed)
    shown = "test digit " + source if _is_index(source) else source
    print(f"wrote {shown} (first) and {n} variations of it (decoder {decoder.path}): {path}")
    return 0


def _evaluate(args, device, out: Path) -> int:
    unclip = load_unclip(args, device)
    report = evaluate_run(unclip.decoder, n_samples=args.n or 1000, seed=args.seed, device=device, out=out,
                          progress=True, extra=None, stage_options={"prior": unclip.prior,
                                                                    "prior_sampling": unclip.prior_sampling,
                                                                    "decoder_sampling": unclip.decoder_sampling})
    width = max(len(k) for k, _ in unclip_rows(report)) + 2
    print("\n".join(f"{k:<{width}}{v}" for k, v in unclip_rows(report)))
    print(f"wrote {report['path']}")
    return 0


def _is_index(source: str) -> bool:
    """Whether --variations names a test digit by its index: ASCII digits only ("7", not "٧" or "²")."""
    return source.isascii() and source.isdigit()


def _check_source(source: str) -> None:
    """One line, before any work, when --variations is neither a test digit's index nor an image file."""
    if _is_index(source) or Path(source).is_file():
        return
    if source.isnumeric():  # "²", "٣": digits, but not ASCII ones
        raise UsageError(f"--variations {shorten(source, 80)}: a test digit's index is written in ASCII digits 0-9 "
                         f"(e.g. --variations 7), and there is no image file of that name")
    raise UsageError(f"--variations {shorten(source, 80)}: no such file (give a test digit's index or an image file)")


def read_digit(path: str, size: int = 28) -> torch.Tensor:
    """--variations' image file -> [1, 1, size, size] in [-1, 1] (ddpm.datasets.read_digit: inverted if dark on
    light); one line when it is missing or unreadable."""
    if not Path(path).is_file():
        _check_source(path)  # an index is no file either
        raise UsageError(f"--variations {shorten(path, 80)}: no such file (give an image file)")
    try:
        return read_image_digit(path, size)
    except DatasetError as e:
        raise UsageError(f"--variations {e}") from None
