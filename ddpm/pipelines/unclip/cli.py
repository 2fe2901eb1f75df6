"""unCLIP's flags and actions, shared by sample and evaluate (ddpm.pipelines.unclip.stage).

    python -m ddpm sample --unclip --prompt "a thick seven"     # prior + decoder: runs/mnist-prior and
                                                                # runs/mnist-decoder, else the shipped ones
    python -m ddpm sample --variations 7                        # test digit 7, encoded by CLIP and decoded 8 times
    python -m ddpm sample --variations my_digit.png --n 16      # a digit of your own (inverted if dark on light)
    python -m ddpm evaluate --run runs/mnist-decoder --prior runs/mnist-prior
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ddpm._util import shorten, write_text_atomic
from ddpm.checkpoints import CheckpointError, LoadedRun, load_run
from ddpm.cli.common import PRETRAINED, UsageError, check_prompt, finite_float, positive_int
from ddpm.pipelines.cascade.cli import resolve_stage
from ddpm.datasets import MNIST_LABEL_NAMES, class_prompts, load_dataset, to_float
from ddpm.pipelines.unclip.stage import (
    DECODER_ETA,
    DECODER_GUIDANCE,
    DECODER_SAMPLER,
    DECODER_STEPS,
    PRIOR_GUIDANCE,
    PRIOR_STEPS,
    VARIATIONS_GUIDANCE,
    Stage,
    Unclip,
    for_variations,
)
from ddpm.samplers import SAMPLERS
from ddpm.viz import save_grid

__all__ = ["add_unclip_flags", "load_unclip", "load_decoder", "decoder_stage", "unclip_text", "unclip_variations",
           "DEFAULT_PRIOR_RUN",           "DEFAULT_DECODER_RUN", "read_digit"]

DEFAULT_PRIOR_RUN, PRETRAINED_PRIOR = "runs/mnist-prior", PRETRAINED.with_name("mnist-prior.pt")
DEFAULT_DECODER_RUN, PRETRAINED_DECODER = "runs/mnist-decoder", PRETRAINED.with_name("mnist-decoder.pt")


def add_unclip_flags(p, sample: bool = True) -> None:
    """--unclip, --variations (sample only), --prior, --decoder and the prior's sampling flags."""
    if sample:
        p.add_argument("--unclip", action="store_true",
                       help="text -> CLIP text embedding -> diffusion prior -> image embedding -> decoder (DALL-E 2 "
                            "in miniature); with --prompt, else the ten class prompts")
        p.add_argument("--variations", metavar="DIGIT",
                       help="decode a digit's CLIP image embedding --n times (default 8) with different noise: a test "
                            "digit's index (0-9999), or an image file (a light digit on a dark ground, or the reverse)")
        p.add_argument("--decoder", help=f"the unCLIP decoder (default {DEFAULT_DECODER_RUN}, else the shipped one)")
    p.add_argument("--decoder-sampler", choices=SAMPLERS, default=None,
                   help=f"the decoder's sampler (default {DECODER_SAMPLER} with eta {DECODER_ETA:g}: stochastic steps, "
                        f"which leave no background speckle); --guidance is the decoder's (default "
                        f"{DECODER_GUIDANCE:g}: none; {VARIATIONS_GUIDANCE:g} for --variations)")
    p.add_argument("--decoder-steps", type=positive_int, default=None,
                   help=f"the decoder's steps (default {DECODER_STEPS})")
    p.add_argument("--prior", help=f"the diffusion prior (default {DEFAULT_PRIOR_RUN}, else the shipped one)")
    p.add_argument("--prior-sampler", choices=SAMPLERS, default=None, help="the prior's sampler (default ddim)")
    p.add_argument("--prior-steps", type=positive_int, default=None, help=f"the prior's steps (default {PRIOR_STEPS})")
    p.add_argument("--prior-guidance", type=finite_float, default=None,
                   help=f"the prior's guidance scale (default {PRIOR_GUIDANCE:g})")


def _load(path: Path, device, what: str) -> LoadedRun:
    try:
        return load_run(path, device=device)
    except CheckpointError as e:
        raise UsageError(f"{what}: {e}") from None


def _check_steps(steps: int | None, run: LoadedRun, flag: str) -> None:
    if steps is not None and steps > run.diffusion.T:
        raise UsageError(f"{flag} {steps} is more than {run.path}'s T = {run.diffusion.T}")


def load_decoder(args, device) -> Stage:
    """The decoder of --decoder, sampled with --sampler, --steps, --guidance and the options they share."""
    decoder = _load(resolve_stage(getattr(args, "decoder", None), DEFAULT_DECODER_RUN, PRETRAINED_DECODER,
                                  "mnist-decoder"), device, "--decoder")
    return decoder_stage(args, decoder)


def decoder_stage(args, decoder: LoadedRun) -> Stage:
    if decoder.config.unclip_stage != "decoder":
        raise UsageError(f"{decoder.path} is not an unCLIP decoder (preset {decoder.config.preset!r}); train one with "
                         f"--preset mnist-decoder")
    for flag in ("steps", "eta"):  # the generic sampler flags are not the stages' (--sampler is refused in sample)
        if getattr(args, flag, None) not in (None, 0.0, [None]):
            raise UsageError(f"--{flag} is for one model; unCLIP's stages take --decoder-steps, --prior-steps and the "
                             f"decoder's DDIM eta {DECODER_ETA:g}")
    _check_steps(args.decoder_steps, decoder, "--decoder-steps")
    options = {k: getattr(args, k, None) for k in ("threshold", "spacing", "precision")}
    return Stage(decoder, args.decoder_sampler, args.decoder_steps, args.guidance,
                 {k: v for k, v in options.items() if v is not None})


def load_unclip(args, device, decoder: LoadedRun | None = None) -> Unclip:
    """The Unclip of --prior and --decoder (or of ``decoder``, already loaded): the decoder sampled as
    load_decoder says, the prior with --prior-sampler, --prior-steps and --prior-guidance."""
    dec = decoder_stage(args, decoder) if decoder is not None else load_decoder(args, device)
    prior = _load(resolve_stage(args.prior, DEFAULT_PRIOR_RUN, PRETRAINED_PRIOR, "mnist-prior"), device, "--prior")
    _check_steps(args.prior_steps, prior, "--prior-steps")
    try:
        return Unclip(Stage(prior, args.prior_sampler, args.prior_steps, args.prior_guidance), dec)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _record(path: Path, unclip: Unclip | Stage, **what) -> Path:
    """Beside the picture: which runs made it, and how (the JSON of the same name)."""
    runs = unclip.describe() if isinstance(unclip, Unclip) else {"decoder": str(unclip.run.path),
                                                                 **unclip.settings()}
    return write_text_atomic(path.with_suffix(".json"), json.dumps({**what, **runs}, indent=2) + "\n")


def unclip_text(args, device, out_dir: Path) -> int:
    """sample --unclip: --n images of --prompt (default 8), or 8 (--n) of each class prompt, one row each."""
    if args.klass is not None:
        raise UsageError("--unclip takes --prompt (the CLIP reads captions), not --class")
    unclip = load_unclip(args, device)
    if args.prompt is not None:
        check_prompt(args.prompt, unclip.clip.tokenizer, unclip.clip.config.max_prompt_len,
                     "the CLIP's {n} words are the captions' (python -m ddpm sample --vocabulary lists them)")
        prompts, nrow = [args.prompt] * (args.n or 8), 8
    else:
        per = args.n or 8
        prompts, nrow = class_prompts(MNIST_LABEL_NAMES, torch.arange(10).repeat_interleave(per), "mnist"), per
    out = Path(args.out) if args.out else out_dir / f"unclip_seed{args.seed}.png"
    images, _ = unclip(prompts, torch.Generator(device).manual_seed(args.seed))
    path = save_grid(images, out, nrow=nrow)
    _record(path, unclip, prompts=sorted(set(prompts)), n=len(prompts), seed=args.seed)
    d = unclip.describe()
    print(f"wrote {len(prompts)} unCLIP samples (prior {d['prior']}, {d['prior_sampler']} {d['prior_steps']} steps, "
          f"guidance {d['prior_guidance']:g}; decoder {d['decoder']}, {d['decoder_sampler']} {d['decoder_steps']} "
          f"steps, guidance {d['decoder_guidance']:g}): {path} (and what made it: {path.with_suffix('.json')})")
    return 0


def read_digit(path: str, size: int = 28) -> torch.Tensor:
    """An image file -> [1, 1, size, size] in [-1, 1], grayscale, a light digit on a dark ground (a mostly light
    image is inverted, as a digit drawn in ink on paper is). One line on a file that is not an image."""
    try:
        with Image.open(path) as im:
            gray = np.asarray(im.convert("L").resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255
    except FileNotFoundError:
        raise UsageError(f"--variations {shorten(path, 80)}: no such file (give a test digit's index or an image "
                         f"file)") from None
    except (UnidentifiedImageError, OSError) as e:
        raise UsageError(f"--variations {shorten(path, 80)} is not an image PIL can read ({type(e).__name__})") \
            from None
    if gray.mean() > 0.5:
        gray = 1.0 - gray
    return torch.from_numpy(gray * 2 - 1)[None, None]


def unclip_variations(args, device, out_dir: Path) -> int:
    """sample --variations DIGIT: the digit beside --n decodings of its CLIP image embedding."""
    for flag, given in (("--prompt", args.prompt is not None), ("--class", args.klass is not None)):
        if given:
            raise UsageError(f"--variations decodes a digit's own embedding: drop {flag}")
    decoder = for_variations(load_decoder(args, device))
    source = args.variations
    if source.isdigit():
        test = load_dataset(decoder.run.config.data.dataset, "test", root=decoder.run.config.data.root)
        if int(source) >= len(test):
            raise UsageError(f"--variations {source}: the test set has digits 0..{len(test) - 1}")
        x, name = to_float(test.images[int(source)][None]), f"test{int(source)}"
    else:
        x, name = read_digit(source, decoder.run.config.model.image_size), Path(source).stem
    n = args.n or 8
    clip = decoder.run.clip
    e = clip.encode_image(x.to(device)).repeat(n, 1)
    images = decoder(e, torch.Generator(device).manual_seed(args.seed)).clamp(-1, 1)
    out = Path(args.out) if args.out else out_dir / f"variations_{name}_seed{args.seed}.png"
    path = save_grid(torch.cat([x.to(images.device), images]), out, nrow=min(n + 1, 9))  # the digit first
    _record(path, decoder, source=source, n=n, seed=args.seed)
    print(f"wrote {'test digit ' + source if source.isdigit() else source} (first) and {n} variations of it (decoder "
          f"{decoder.run.path}): {path}")
    return 0
