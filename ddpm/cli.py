"""The command line: python -m ddpm {train, sample, export, visualize, evaluate, bench} ...

Thin argparse front ends over importable functions. Bad input (unknown preset, class out of range,
unknown words in a prompt, a run folder without a checkpoint) ends with one line on stderr and exit
code 2, not a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from ddpm.checkpoints import CheckpointError
from ddpm.config import PRESETS, get_preset
from ddpm.datasets import DatasetError
from ddpm.samplers import SAMPLERS
from ddpm.training import condition_for_labels

__all__ = ["main", "build_parser", "resolve_condition", "resolve_run", "set_threads"]

DEFAULT_RUN = "runs/mnist"
PRETRAINED = Path(__file__).resolve().parent.parent / "data" / "pretrained" / "mnist.pt"


class UsageError(ValueError):
    """A bad argument: printed as one line."""


# ---------------------------------------------------------------------------------------------- train
def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model (default: the mnist preset on the shipped MNIST)",
                       description="Train a DDPM. Writes runs/<name>/ with config.json, log.csv, loss_by_t.csv, "
                                   "loss.png, samples/ and checkpoint.pt. Ctrl-C saves a checkpoint; --resume "
                                   "continues exactly.")
    p.add_argument("--preset", default="mnist", help=f"one of: {', '.join(PRESETS)} (default: mnist)")
    p.add_argument("--name", help="run name: the folder runs/<name> (default: the preset name)")
    p.add_argument("--runs-dir", default="runs", help="parent folder of run folders (default: runs)")
    p.add_argument("--resume", action="store_true", help="continue runs/<name> from its checkpoint")
    p.add_argument("--steps", type=int, help="total optimizer steps")
    p.add_argument("--batch-size", type=int, help="global batch size")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--cond", choices=("none", "class", "text"), help="conditioning (default: the preset's)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")
    p.add_argument("--sample-every", type=int, help="write a sample grid every N steps (0: only at the end)")
    p.add_argument("--ckpt-every", type=int, help="save a checkpoint every N steps")
    p.add_argument("--ema-decay", type=float)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice; 1 is often "
                                               "faster on a machine that is busy with other work)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def set_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


def cmd_train(args) -> int:
    from ddpm.training import Trainer, setup_distributed

    overrides = {k: v for k, v in {
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
        "sample_every": args.sample_every, "ckpt_every": args.ckpt_every, "ema_decay": args.ema_decay,
        "compile": True if args.compile else None, "cond": args.cond}.items() if v is not None}
    config = get_preset(args.preset, **overrides)
    set_threads(args.threads)
    run_dir = Path(args.runs_dir) / (args.name or args.preset)
    dist, device = setup_distributed(dict(os.environ), args.device)
    if dist.is_main:
        print(f"training preset {config.preset!r} on {device} -> {run_dir}"
              + (f" ({dist.world_size} processes)" if dist.enabled else ""), flush=True)
    trainer = Trainer(config, run_dir, device=device, resume=args.resume, dist=dist, progress=not args.no_progress)
    summary = trainer.fit()
    if dist.is_main:
        state = "interrupted; checkpoint saved" if summary["interrupted"] else "done"
        print(f"{state}: step {summary['step']}/{config.train.steps}, {summary['steps_run']} steps in "
              f"{summary['wall_s']:.0f} s ({summary['steps_per_s']:.2f} steps/s), final loss "
              f"{summary['final_loss']:.4f}")
        print(f"checkpoint: {summary['checkpoint']}")
        if "samples" in summary:
            print(f"samples: {summary['samples']}")
        print(f"next: python -m ddpm sample --run {run_dir}")
    if dist.enabled:
        import torch.distributed as tdist

        tdist.destroy_process_group()
    return 0


# ---------------------------------------------------------------------------------------------- sample
def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="generate images from a trained run",
                       description="Sample from runs/<name> (EMA weights) and write an image grid.")
    p.add_argument("--run", default=None, help=f"run folder or exported .pt (default: {DEFAULT_RUN}, else the "
                                                "shipped pretrained MNIST model)")
    p.add_argument("--n", type=int, default=None, help="number of images (default: 8 per class, or 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", choices=SAMPLERS, default="ddim", help="ddim (fast, default) or ancestral (the "
                                                                       "paper's Algorithm 2)")
    p.add_argument("--steps", type=int, help="sampling steps (default: 50 for ddim, T for ancestral)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0: deterministic; 1: ancestral-like)")
    p.add_argument("--variance", choices=("fixed_small", "fixed_large"), default="fixed_small",
                   help="ancestral sampler's sigma_t^2: beta_tilde (small) or beta (large)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale s (1: none; default: the "
                                                  "run's config)")
    p.add_argument("--class", dest="klass", help="class label (index or name, e.g. 7 or seven)")
    p.add_argument("--prompt", help='text prompt for text-conditioned runs, e.g. "a handwritten seven"')
    p.add_argument("--trajectory", help="also write the reverse process as an animated GIF to this path")
    p.add_argument("--out", help="output PNG (default: <run>/samples/sample_<sampler>_seed<seed>.png)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="CPU threads for torch (1 is often faster on a busy machine)")
    p.set_defaults(func=cmd_sample)


def resolve_run(run: str | None) -> Path:
    """--run as given, else runs/mnist if it has a checkpoint, else the shipped pretrained model."""
    if run is not None:
        return Path(run)
    if (Path(DEFAULT_RUN) / "checkpoint.pt").exists():
        return Path(DEFAULT_RUN)
    if PRETRAINED.exists():
        return PRETRAINED
    raise UsageError(f"no --run given and no {DEFAULT_RUN}/checkpoint.pt; train first: python -m ddpm train")


def resolve_condition(loaded, n: int | None, klass: str | None, prompt: str | None):
    """(cond, n, nrow) for a run: a class label, a prompt, or one row per class; clear errors otherwise."""
    mode, names = loaded.cond, loaded.label_names
    if mode == "none":
        if klass is not None or prompt is not None:
            raise UsageError(f"{loaded.path} is an unconditional model: drop --class/--prompt")
        return None, n or 64, 8
    if mode == "class" and prompt is not None:
        raise UsageError(f"{loaded.path} is class-conditional: use --class, not --prompt")
    if mode == "text" and klass is not None and prompt is None:
        k = _class_index(klass, names, loaded)
        (prompt,) = condition_for_labels("text", torch.tensor([k]), names, loaded.config.data.dataset)
    if mode == "class" and klass is not None:
        k = _class_index(klass, names, loaded)
        n = n or 64
        return torch.full((n,), k, dtype=torch.long), n, 8
    if mode == "text" and prompt is not None:
        n = n or 64
        loaded.model.conditioner.tokenizer.encode([prompt], loaded.config.model.max_prompt_len)  # unknown words
        return [prompt] * n, n, 8
    classes = loaded.config.model.num_classes if mode == "class" else len(names)
    per = max(1, (n or 8 * classes) // classes)
    labels = torch.arange(classes).repeat_interleave(per)
    return condition_for_labels(mode, labels, names, loaded.config.data.dataset), len(labels), per


def _class_index(klass: str, names, loaded) -> int:
    num = loaded.config.model.num_classes if loaded.cond == "class" else len(names)
    if klass.lstrip("-").isdigit():
        k = int(klass)
    elif klass.lower() in [n.lower() for n in names]:
        k = [n.lower() for n in names].index(klass.lower())
    else:
        raise UsageError(f"--class {klass!r} is neither a number nor a class name; classes: "
                         f"{', '.join(f'{i}={n}' for i, n in enumerate(names)) or f'0..{num - 1}'}")
    if not 0 <= k < num:
        raise UsageError(f"--class {k} is out of range: this model has classes 0..{num - 1}")
    return k


def cmd_sample(args) -> int:
    from ddpm import viz
    from ddpm.checkpoints import load_run
    from ddpm.samplers import sample
    from ddpm.training import select_device

    set_threads(args.threads)
    device = select_device(args.device)
    loaded = load_run(resolve_run(args.run), device=device, use_ema=not args.no_ema)
    if loaded.config.model_kind == "mlp":
        raise UsageError(f"{loaded.path} is a 2D toy model: see python -m ddpm visualize toy")
    cond, n, nrow = resolve_condition(loaded, args.n, args.klass, args.prompt)
    if isinstance(cond, torch.Tensor):
        cond = cond.to(device)
    guidance = args.guidance if args.guidance is not None else loaded.config.train.guidance
    steps = args.steps if args.steps is not None else (50 if args.sampler == "ddim" else loaded.diffusion.T)
    kwargs = dict(steps=steps, guidance_scale=guidance if cond is not None else None,
                  generator=torch.Generator(device).manual_seed(args.seed), device=device, progress=True)
    if args.sampler == "ddim":
        kwargs["eta"] = args.eta
    else:
        kwargs["variance"] = args.variance
    shape = (n, *loaded.shape)
    if args.trajectory:  # the same samples (same seed), keeping about 40 moments of the reverse process
        frames = viz.reverse_trajectory(loaded.model, loaded.diffusion, shape, cond, sampler=args.sampler,
                                        frames=40, **kwargs)
        x0 = frames[-1].x_t
    else:
        x0 = sample(loaded.model, loaded.diffusion, shape, cond, sampler=args.sampler, **kwargs)
    # a run folder gets its samples/ sub-folder; an exported model file writes to ./samples/
    run_dir = loaded.path.parent if loaded.path.name == "checkpoint.pt" else Path(".")
    out = Path(args.out) if args.out else run_dir / "samples" / f"sample_{args.sampler}_seed{args.seed}.png"
    path = viz.save_grid(x0, out, nrow=nrow)
    print(f"wrote {n} samples ({args.sampler}, {steps} steps, guidance {guidance if cond is not None else 'n/a'}) "
          f"from step {loaded.step} of {loaded.path}: {path}")
    if args.trajectory:
        gif = viz.save_reverse_animation([f.x_t for f in frames], [f.t for f in frames], args.trajectory,
                                         nrow=nrow)
        print(f"wrote the reverse process ({len(frames)} frames): {gif}")
    return 0


# ---------------------------------------------------------------------------------------------- export
def _add_export(sub) -> None:
    p = sub.add_parser("export", help="write only the EMA weights + config of a run (small file)")
    p.add_argument("--run", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--half", action="store_true", help="store weights in float16 (half the size)")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from ddpm.checkpoints import export_model

    path = export_model(args.run, args.out, half=args.half)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


# ---------------------------------------------------------------------------------------------- the rest
def _add_delegated(sub, name: str, module: str, help_text: str) -> None:
    """Subcommands whose arguments live next to their code: module.add_arguments(p) and module.cli(args)."""
    import importlib

    mod = importlib.import_module(module)
    p = sub.add_parser(name, help=help_text, description=(mod.__doc__ or "").strip().splitlines()[0])
    mod.add_arguments(p)
    p.set_defaults(func=mod.cli)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ddpm", description="An educational DDPM in pure PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    _add_train(sub)
    _add_sample(sub)
    _add_export(sub)
    for name, module, help_text in (("visualize", "ddpm.viz_cli", "write figures: forward, schedules, reverse, ..."),
                                    ("evaluate", "ddpm.metrics", "bits/dim and sample quality of a run"),
                                    ("bench", "ddpm.bench", "training and sampling speed on this machine")):
        try:
            _add_delegated(sub, name, module, help_text)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ddpm.training import TrainingError

    try:
        return args.func(args) or 0
    except (UsageError, CheckpointError, DatasetError, TrainingError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

