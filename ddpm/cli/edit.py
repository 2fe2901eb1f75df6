"""Edit real images with a trained model, nothing trained for it: SDEdit (--strength), inpainting (--mask),
DDIM inversion (--invert) and interpolation between two inverted images (--interpolate).

    python -m ddpm edit --from-test 3 --class 8 --strength 0.6     # test digit 3 redrawn as an eight
    python -m ddpm edit --from-test 3 --mask right                 # its right half drawn again
    python -m ddpm edit --image my_digit.png --prompt "a thick seven" --strength 0.7
    python -m ddpm edit --from-test 5 --invert [--class 3]         # reconstruct it, or the same hand, another digit
    python -m ddpm edit --from-test 3 --interpolate 5              # from test digit 3 to test digit 5

Images of any size and RGB(A) are read as the model's images (dark ink on light paper is inverted). --out x.png
writes the edited images as a grid in input order and x.panel.png (input / mask / result) beside it; --out
x.npz writes inputs, masks and results as uint8 arrays; either with x.png.json (or x.npz.json), what made them.
Defaults: SDEdit runs DPM-Solver++(2M) with 15 steps below t_0; inpainting RePaint, the ancestral sampler on 50
respaced steps with jumps of 5 and 5 resamplings; inversion DDIM with 50 steps, unguided. docs/editing.md has
what each measures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ddpm._files import record_path, save_npz, write_json
from ddpm._util import shorten
from ddpm.cli.common import (
    UsageError,
    add_device_flags,
    add_run_flag,
    add_sampler_flags,
    check_output,
    check_record,
    guidance_scale,
    load_image_run,
    nonnegative_int,
    positive_int,
    resolve_condition,
    sampler_flags,
    setup_device,
)
from ddpm.datasets import DatasetError, load_dataset, read_digit, to_float, to_uint8
from ddpm.editing import MASK_NAMES, network_calls, read_mask
from ddpm.editing.evaluate import EVALUATIONS, inpainting_table, inversion_table, sdedit_curve
from ddpm.editing.masks import named_mask
from ddpm.editing.runs import Editor
from ddpm.metrics.judge import SampleJudge
from ddpm.pipelines.base import Sampling
from ddpm.viz import save_grid, save_panels

__all__ = ["add_arguments", "run", "DEFAULTS"]

DEFAULTS = {"sdedit": ("dpmpp-2m", 15), "inpaint": ("ancestral", 50), "invert": ("ddim", 50),
            "interpolate": ("ddim", 50)}  # mode: (sampler, steps)


def strength(text: str) -> float:
    """argparse type: a strength in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {shorten(text, 40)!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"the strength is a fraction of the noise schedule, in (0, 1]; got {value:g}")
    return value


def index_list(text: str) -> list[int]:
    """argparse type: test-set indices, e.g. 3 or 3,5,8."""
    return [nonnegative_int(part.strip()) for part in text.split(",")]


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_flag(p)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--image", help="an image file to edit (any size; RGB(A); ink on paper is inverted)")
    source.add_argument("--from-test", type=index_list, metavar="INDEX[,INDEX...]",
                        help="test-set images to edit, by index")
    p.add_argument("--strength", type=strength, help=f"SDEdit: the noise level t_0 / T to start from, in (0, 1] "
                                                     f"(default {DEFAULT_STRENGTH} when only --class or --prompt says "
                                                     f"what to make)")
    p.add_argument("--mask", help=f"inpainting: a PNG mask (white: drawn, black: kept) or one of "
                                  f"{', '.join(MASK_NAMES)} (the part drawn)")
    p.add_argument("--jump", type=positive_int, default=None, help="inpainting: RePaint's jump length j (default 5)")
    p.add_argument("--resample", type=positive_int, default=None,
                   help="inpainting: RePaint's resamplings r (default 5; 1: naive replacement)")
    p.add_argument("--invert", action="store_true",
                   help="DDIM inversion: decode the image's noise again (with --class/--prompt: under that one)")
    p.add_argument("--interpolate", metavar="OTHER", help="a test index or an image: the decodings between the "
                                                          "two images' inverted noises")
    p.add_argument("--frames", type=positive_int, default=None, help="--interpolate: how many images (default 8)")
    p.add_argument("--class", dest="klass", help="the target class (index or name)")
    p.add_argument("--prompt", help="the target prompt of a text model")
    p.add_argument("--guidance", type=guidance_scale, help="classifier-free guidance s (default: the run's; "
                                                         "inversion: none)")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--evaluate", choices=EVALUATIONS, help="measure a method on --n random test digits and write "
                                                           "a JSON report (docs/editing.md's tables)")
    p.add_argument("--n", type=positive_int, default=None, help="--evaluate: how many test digits (default 200)")
    add_sampler_flags(p, default=None, precision="auto", default_text="dpmpp-2m, ancestral for --mask, ddim for "
                                                                      "--invert")
    p.add_argument("--out", help="output .png (with x.panel.png beside it) or .npz (default: "
                                 "samples/edit_<mode>_seed<seed>.png)")
    add_device_flags(p)


DEFAULT_STRENGTH = 0.6  # SDEdit with only a target given: the lowest strength read as the target >= 95% (n = 100)


def _mode(args) -> str:
    flags = {"sdedit": "--strength", "inpaint": "--mask", "interpolate": "--interpolate"}
    chosen = [name for name, flag in flags.items() if getattr(args, flag[2:]) is not None]
    if not chosen and not args.invert and (args.klass is not None or args.prompt is not None):
        args.strength = DEFAULT_STRENGTH  # "redraw it as ...": SDEdit, where docs/editing.md's curve reaches 96%
        return "sdedit"
    if not chosen and not args.invert:
        raise UsageError("say how to edit: --strength S (SDEdit), --mask M (inpainting), --invert or --interpolate "
                         "OTHER")
    if len(chosen) > 1 or (args.invert and chosen and chosen != ["interpolate"]):
        given = [flags[c] for c in chosen] + (["--invert"] if args.invert else [])
        raise UsageError(f"{' and '.join(given)} do not combine: give one way to edit (--interpolate inverts "
                         f"already)")
    chosen = chosen or ["invert"]
    mode = chosen[0]
    for flag, value, owner in (("--jump", args.jump, "inpaint"), ("--resample", args.resample, "inpaint"),
                               ("--frames", args.frames, "interpolate")):
        if value is not None and mode != owner:
            raise UsageError(f"{flag} is for {'--mask' if owner == 'inpaint' else '--interpolate'}, not this edit")
    if args.image is None and args.from_test is None:
        raise UsageError("give the images to edit: --image PNG or --from-test INDEX[,INDEX...]")
    if mode == "interpolate" and (args.image is None and len(args.from_test) != 1):
        raise UsageError("--interpolate goes from one image to another: give one --from-test index or --image")
    return mode


def _read(source: str, shape, flag: str) -> torch.Tensor:
    try:
        return read_digit(source, shape[-1], shape[0])
    except DatasetError as e:
        raise UsageError(f"{flag}: {e}") from None


def _inputs(args, loaded, test_cache: dict) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """(images [N, C, H, W] in [-1, 1], their test labels or None, how the output names them)."""
    if args.image is not None:
        if not Path(args.image).is_file():
            raise UsageError(f"--image {shorten(args.image, 80)}: no such file")
        return _read(args.image, loaded.image_shape, "--image"), None, args.image
    test = _test(loaded, test_cache)
    bad = [i for i in args.from_test if i >= len(test)]
    if bad:
        raise UsageError(f"--from-test {bad[0]}: the test set has images 0..{len(test) - 1}")
    idx = torch.tensor(args.from_test)
    labels = test.labels[idx] if test.labels is not None else None
    return to_float(test.images[idx]), labels, "test images " + ",".join(map(str, args.from_test))


def _test(loaded, cache: dict):
    if "test" not in cache:
        cache["test"] = load_dataset(loaded.config.data.dataset, "test", root=loaded.config.data.root)
    return cache["test"]


def _outputs(args, mode: str) -> tuple[Path, Path | None]:
    out = check_output(args.out or f"samples/edit_{mode}_seed{args.seed}.png", (".png", ".npz"), "--out")
    panel = check_output(out.with_suffix(".panel.png"), (".png",), "the panel") if out.suffix == ".png" else None
    check_record(out)
    return out, panel


def run(args) -> int:
    device = setup_device(args)
    if args.evaluate is not None:
        return _evaluate(args, device)
    if args.n is not None:
        raise UsageError("--n is for --evaluate; the images edited are --image or --from-test's")
    mode = _mode(args)
    out, panel = _outputs(args, mode)
    loaded = load_image_run(args.run, device, text=args.prompt is not None)
    sampler, default_steps = DEFAULTS[mode]
    sampler = args.sampler or sampler
    steps, options = sampler_flags(args, loaded.diffusion.T, sampler,
                                   args.steps or (default_steps if sampler == DEFAULTS[mode][0] else None))
    guidance = args.guidance if args.guidance is not None else (1.0 if mode in ("invert", "interpolate") else None)
    try:
        editor = Editor(loaded, Sampling(sampler, steps, guidance, options))
    except ValueError as e:
        raise UsageError(str(e)) from None
    cache: dict = {}
    images, labels, named = _inputs(args, loaded, cache)
    n = len(images)
    loaded.check_batch(n)
    target = None
    if args.klass is not None or args.prompt is not None:
        target, _, _ = resolve_condition(loaded, n, args.klass, args.prompt)
        target = target.to(device) if isinstance(target, torch.Tensor) else target
    generator = torch.Generator(device).manual_seed(args.seed)
    mask = None
    what = {"mode": mode, "inputs": named, "run": str(loaded.path), "step": loaded.step, "sampler": sampler,
            "steps": steps, "guidance": guidance, "class": args.klass, "prompt": args.prompt, "seed": args.seed}
    if mode == "sdedit":
        results = editor.sdedit(images, target, args.strength, generator)
        what["strength"] = args.strength
        about = f"SDEdit at strength {args.strength:g}"
    elif mode == "inpaint":
        side = loaded.image_shape[-1]
        if args.mask in MASK_NAMES:
            mask = named_mask(args.mask, n, side, torch.Generator().manual_seed(args.seed))
        elif Path(args.mask).is_file():
            try:
                mask = read_mask(args.mask, side).expand(n, -1, -1, -1)
            except DatasetError as e:
                raise UsageError(f"--mask: {e}") from None
        else:
            raise UsageError(f"--mask {shorten(args.mask, 80)}: neither a mask name ({', '.join(MASK_NAMES)}) nor a "
                             f"file")
        jump, resample = args.jump or 5, args.resample or 5
        results = editor.inpaint(images, mask, target, jump=jump, resample=resample, generator=generator)
        calls = network_calls(steps, jump, resample)
        what.update(mask=args.mask, jump=jump, resample=resample, network_calls_per_image=calls)
        about = f"inpainting ({args.mask}; RePaint j = {jump}, r = {resample}: {calls} network calls per image)"
    else:
        source = editor.condition(labels) if labels is not None else None
        if mode == "invert":
            x_T = editor.invert(images, source)
            results = editor.reconstruct(x_T, target if target is not None else source)
            if target is None:
                mse = ((results.cpu() - images) ** 2).flatten(1).mean(1).clamp(min=1e-12)
                psnr = (10 * torch.log10(4 / mse)).tolist()
                what["psnr_db"] = [round(v, 2) for v in psnr]
            about = "DDIM inversion" + (", decoded under the target" if target is not None else
                                        f", reconstructed (PSNR {sum(what['psnr_db']) / n:.1f} dB on average)")
        else:
            if args.interpolate.isascii() and args.interpolate.isdigit():
                other_test = _test(loaded, cache)
                k = int(args.interpolate)
                if k >= len(other_test):
                    raise UsageError(f"--interpolate {k}: the test set has images 0..{len(other_test) - 1}")
                other = to_float(other_test.images[k:k + 1])
                other_label = other_test.labels[k:k + 1] if other_test.labels is not None else None
            elif Path(args.interpolate).is_file():
                other, other_label = _read(args.interpolate, loaded.image_shape, "--interpolate"), None
            else:
                raise UsageError(f"--interpolate {shorten(args.interpolate, 80)}: neither a test index nor a file")
            other_source = editor.condition(other_label) if other_label is not None else None
            frames = max(args.frames or 8, 2)
            results = editor.interpolate(images[:1], other, source, other_source, frames=frames)
            images = images[:1].expand(frames, -1, -1, -1)
            what.update(other=args.interpolate, frames=frames)
            about = f"interpolation in {frames} frames to {args.interpolate}"
    results = results.cpu().clamp(-1, 1)
    images = images.cpu()
    if out.suffix == ".npz":
        arrays = {"inputs": to_uint8(images), "results": to_uint8(results)}
        if mask is not None:
            arrays["masks"] = mask.to(torch.uint8)
        save_npz(out, arrays)
    else:
        save_grid(results, out, nrow=min(len(results), 8))
        kept = [torch.where(mask.bool(), images, torch.zeros_like(images))] if mask is not None else []
        panels, titles = [images, *kept, results], ["input", *(["kept (grey: drawn)"] if kept else []), "result"]
        save_panels(panels, panel, nrow=1 if len(results) <= 8 else 8, titles=titles)
    write_json(record_path(out), what)
    extra = f"; the panel: {panel}" if panel is not None else ""
    images = f"{len(results)} image{'s' if len(results) != 1 else ''}"
    print(f"wrote {images} ({about}; {sampler}, {steps} steps) of {named} by {loaded.path}: {out}"
          f"{extra} (what made them: {record_path(out)})")
    return 0


STRENGTHS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def _evaluate(args, device) -> int:
    """--evaluate: one of docs/editing.md's tables on --n random test digits of the run's dataset."""
    given = [f for f, v in (("--image", args.image), ("--from-test", args.from_test), ("--strength", args.strength),
                            ("--mask", args.mask), ("--interpolate", args.interpolate)) if v is not None]
    if given or args.invert:
        raise UsageError(f"--evaluate picks its own test digits and settings: drop {', '.join(given or ['--invert'])}")
    out = check_output(args.out or f"samples/edit_eval_{args.evaluate}.json", (".json",), "--out")
    loaded = load_image_run(args.run, device, text=args.prompt is not None)
    n = args.n or 200
    mode = args.evaluate  # the names of DEFAULTS
    sampler, default_steps = DEFAULTS[mode]
    sampler = args.sampler or sampler
    steps, options = sampler_flags(args, loaded.diffusion.T, sampler,
                                   args.steps or (default_steps if sampler == DEFAULTS[mode][0] else None))
    try:
        editor = Editor(loaded, Sampling(sampler, steps, args.guidance, options))
    except ValueError as e:
        raise UsageError(str(e)) from None
    test = _test(loaded, {})
    if n > len(test):
        raise UsageError(f"--n {n}: the test set has {len(test)} images")
    idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(args.seed))[:n]
    judge = SampleJudge(loaded.config.data.dataset, test, loaded.config.data.root, None, n, args.seed, False)
    what = {"run": str(loaded.path), "step": loaded.step, "n": n, "seed": args.seed, "sampler": sampler,
            "steps": steps, "guidance": args.guidance, "frechet_floor": judge.floor}
    if args.evaluate == "sdedit":
        rows = sdedit_curve(editor, judge, test, idx, STRENGTHS, args.seed)
    elif args.evaluate == "inpaint":
        jump = args.jump or 5
        rows = inpainting_table(editor, judge, test, idx, ("right", "top", "center", "random"),
                                (1, 5, 10) if args.resample is None else (1, args.resample), steps, jump, args.seed)
        what["jump"] = jump
    else:
        rows = inversion_table(editor, judge, test, idx, (10, 20, 50, 100), (1.0, 2.0), (0.5, 0.6, 0.7, 0.8),
                               args.seed)
    write_json(out, {**what, "rows": rows})
    for row in rows if isinstance(rows, list) else [r for part in rows.values() for r in part]:
        print("  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    print(f"wrote {out} (n = {n}; Frechet floor at this n: {judge.floor:.2f})")
    return 0
