"""Write figures of the forward and reverse processes, schedules, losses and 2D toys, and print their paths.

    python -m ddpm visualize forward --schedule cosine      # figures/forward_cosine_T1000.png
    python -m ddpm visualize schedules --out-dir tmp
    python -m ddpm visualize reverse --steps 50             # needs a trained model (see --run)

No model needed: forward, chain, histogram, schedules, pitfall, embedding, unet. A trained image model
(--run; default runs/mnist if it has a checkpoint, else the shipped data/pretrained/mnist.pt): reverse,
loss-profile. toy trains a small MLP on a 2D toy set for --steps steps (seconds) unless --run names a
toy2d run. Images come from the MNIST test set.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

__all__ = ["add_arguments", "cli", "FIGURES"]

SAMPLER_CHOICES = ("ddim", "ancestral")


def add_arguments(parser) -> None:
    """The arguments of ``python -m ddpm visualize``; the epilog lists what each choice draws."""
    import argparse

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "figures:\n" + "\n".join(f"  {name:13s} {fn.__doc__.strip().splitlines()[0]}"
                                             for name, fn in FIGURES.items())
    parser.add_argument("what", choices=tuple(FIGURES), help="which figure(s) to write (see below)")
    parser.add_argument("--out-dir", default="figures", help="folder for the files (default: figures/)")
    parser.add_argument("--run", help="run folder or exported .pt for reverse/loss-profile/toy (default: "
                                      "runs/mnist if present, else data/pretrained/mnist.pt)")
    parser.add_argument("--schedule", default="linear",
                        help="beta schedule: linear, cosine, quadratic, sigmoid (default: linear)")
    parser.add_argument("--T", type=int, help="diffusion steps (default: 1000; pitfall: 300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, help="reverse: sampling steps (default: 50 for ddim, T for "
                                                  "ancestral); toy: training steps (default: 2000)")
    parser.add_argument("--sampler", default="ddim", help="reverse: ddim (default) or ancestral")
    parser.add_argument("--n", type=int, help="number of images or points (default depends on the figure)")
    parser.add_argument("--class", dest="klass", help="reverse: class label (index or name)")
    parser.add_argument("--prompt", help="reverse: text prompt for a text-conditioned model")
    parser.add_argument("--toy", default="swiss-roll",
                        help="toy: swiss-roll (default), moons, 8gaussians or checkerboard")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice; 1 is often "
                                                  "faster on a machine that is busy with other work)")


def cli(args) -> int:
    """Write the figures of ``args.what`` and print one path per line."""
    for name in ("n", "steps", "T", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be a positive integer, got {value}")
    from ddpm.cli import set_threads

    set_threads(args.threads)
    torch.manual_seed(args.seed)
    out_dir = Path(args.out_dir)
    for path in FIGURES[args.what](args, out_dir):
        print(path)
    return 0


# ---------------------------------------------------------------------------------------------- helpers
def _diffusion(args, default_T: int = 1000):
    from ddpm.diffusion import GaussianDiffusion
    from ddpm.schedules import make_betas

    # make_betas raises a one-line ValueError listing the known schedules, or saying what is wrong with T
    return GaussianDiffusion(make_betas(args.schedule, args.T or default_T))


def _mnist(n: int):
    """(images uint8 [n, 1, 28, 28], labels [n]) from the MNIST test set."""
    from ddpm.datasets import load_dataset

    data = load_dataset("mnist", split="test")
    return data.images[:n], data.labels[:n]


def _generator(args, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device).manual_seed(args.seed)


def _device(args) -> torch.device:
    from ddpm.training import select_device

    return select_device(args.device)


def _load_image_model(args):
    from ddpm.checkpoints import load_run
    from ddpm.cli import resolve_run

    loaded = load_run(resolve_run(args.run), device=_device(args))
    if loaded.config.model_kind == "mlp":
        raise ValueError(f"{loaded.path} is a 2D toy model: use python -m ddpm visualize toy --run "
                         f"{loaded.path}")
    return loaded


def _tag(args, default_T: int = 1000) -> str:
    return f"{args.schedule}_T{args.T or default_T}"


# ---------------------------------------------------------------------------------------------- figures
def fig_forward(args, out: Path) -> list[Path]:
    """MNIST digits along one run of the forward Markov chain (rows: images, columns: increasing t)"""
    from ddpm import viz

    images, _ = _mnist(args.n or 6)
    title = f"forward process (Markov chain, Eq. 2), {args.schedule} schedule, T = {args.T or 1000}"
    return [viz.plot_forward_trajectory(_diffusion(args), images, generator=_generator(args), title=title,
                                        path=out / f"forward_{_tag(args)}.png")]


def fig_chain(args, out: Path) -> list[Path]:
    """the Markov chain (Eq. 2) against the closed form q(x_t | x_0) (Eq. 4): mean and std at every t"""
    from ddpm import viz

    return [viz.plot_chain_vs_closed_form(_diffusion(args), n=args.n or 2000, generator=_generator(args),
                                          path=out / f"chain_vs_closed_{_tag(args)}.png")]


def fig_histogram(args, out: Path) -> list[Path]:
    """pixel histograms of x_t converging to N(0, 1)"""
    from ddpm import viz

    images, _ = _mnist(args.n or 512)
    return [viz.plot_pixel_histogram(_diffusion(args), images, generator=_generator(args),
                                     path=out / f"histogram_{_tag(args)}.png")]


def fig_schedules(args, out: Path) -> list[Path]:
    """beta_t, alpha_bar_t, sqrt(alpha_bar_t) and log-SNR of all schedules"""
    from ddpm import viz

    T = args.T or 1000
    return [viz.plot_schedules(T=T, path=out / f"schedules_T{T}.png")]


def fig_pitfall(args, out: Path) -> list[Path]:
    """small T without the 1000/T rescale leaves the digit in x_T (--T, default 300)"""
    from ddpm import viz

    T = args.T or 300
    images, _ = _mnist(args.n or 6)
    return [viz.plot_small_T_pitfall(T, images, generator=_generator(args), path=out / f"pitfall_T{T}.png")]


def fig_embedding(args, out: Path) -> list[Path]:
    """the sinusoidal timestep embedding as a heat map"""
    from ddpm import viz

    T = args.T or 1000
    return [viz.plot_timestep_embedding(128, T, path=out / f"timestep_embedding_T{T}.png")]


def fig_unet(args, out: Path) -> list[Path]:
    """the U-Net's stages: resolution and channels (the --run's network, else the mnist preset's)"""
    from ddpm import viz
    from ddpm.checkpoints import build_model, load_run
    from ddpm.config import get_preset

    if args.run is not None:
        loaded = load_run(args.run)
        model, config = loaded.model, loaded.config
    else:
        config = get_preset("mnist")
        model = build_model(config)
    if config.model_kind != "unet":
        raise ValueError(f"{args.run} holds a toy MLP, not a U-Net")
    m = config.model
    x = torch.randn(1, m.in_channels, m.image_size, m.image_size)
    shapes = viz.trace_shapes(model, x, torch.tensor([0]), None)
    return [viz.plot_unet_shapes(shapes, path=out / f"unet_{config.preset}.png")]


def fig_reverse(args, out: Path) -> list[Path]:
    """a trained model's reverse process: x_t beside the predicted x_0 (PNG) and the animation (GIF)"""
    from ddpm import viz
    from ddpm.cli import resolve_condition

    if args.sampler not in SAMPLER_CHOICES:
        raise ValueError(f"unknown --sampler {args.sampler!r}; expected one of: {', '.join(SAMPLER_CHOICES)}")
    loaded = _load_image_model(args)
    n = args.n or 8
    cond, _, _ = resolve_condition(loaded, n, args.klass, args.prompt)
    if cond is not None:
        cond = cond[:n]
        n = len(cond)
        if isinstance(cond, torch.Tensor):
            cond = cond.to(loaded.diffusion.betas.device)
    T = loaded.diffusion.T
    steps = args.steps or (50 if args.sampler == "ddim" else T)
    if steps > T:
        raise ValueError(f"--steps {steps} is more than the model's T = {T}")
    guidance = loaded.config.train.guidance if cond is not None else None
    print(f"sampling {n} images with {args.sampler}, {steps} steps, from step {loaded.step} of {loaded.path}",
          file=sys.stderr, flush=True)
    frames = viz.reverse_trajectory(loaded.model, loaded.diffusion, (n, *loaded.shape), cond,
                                    sampler=args.sampler, steps=steps, frames=None, guidance_scale=guidance,
                                    generator=_generator(args, loaded.diffusion.betas.device))

    def pick(k: int):  # k frames evenly spaced from x_T to x_0
        k = min(k, len(frames))
        return [frames[round(i * (len(frames) - 1) / (k - 1))] for i in range(k)]

    name = f"reverse_{args.sampler}{steps}"
    title = f"reverse process ({args.sampler}, {steps} steps): $x_t$ and the predicted $x_0$"
    png = viz.plot_reverse_trajectory(pick(9), n_images=min(n, 4), title=title, path=out / f"{name}.png")
    movie = pick(40)
    gif = viz.save_reverse_animation([f.x_t for f in movie], [f.t for f in movie], out / f"{name}.gif",
                                     nrow=min(n, 8), pred_x0=[f.pred_x0 for f in movie])
    return [png, gif]


def fig_loss_profile(args, out: Path) -> list[Path]:
    """a trained model's L_simple loss at each timestep, on MNIST test images"""
    from ddpm import viz
    from ddpm.datasets import captions_for, load_dataset

    loaded = _load_image_model(args)
    data = load_dataset(loaded.config.data.dataset, split="test", root=loaded.config.data.root)
    n = args.n or 64
    images, labels = data.images[:n], (data.labels[:n] if data.labels is not None else None)
    device = loaded.diffusion.betas.device
    cond = None
    if loaded.cond == "class":
        cond = labels.to(device)
    elif loaded.cond == "text":
        cond = captions_for(data.label_names, labels, generator=_generator(args), dataset=data.name)
    print(f"evaluating the loss of {loaded.path} (step {loaded.step}) on {n} test images at 40 timesteps",
          file=sys.stderr, flush=True)
    ts, losses = viz.loss_profile(loaded.model, loaded.diffusion, images, cond, generator=_generator(args, device))
    return [viz.plot_loss_profile(ts, losses, title=f"loss per timestep, {loaded.path} (step {loaded.step})",
                                  path=out / "loss_profile.png")]


def fig_toy(args, out: Path) -> list[Path]:
    """2D toy: forward diffusion of the points, particle trajectories, and the learned eps field"""
    from ddpm import viz
    from ddpm.checkpoints import load_run
    from ddpm.config import get_preset
    from ddpm.datasets import toy2d
    from ddpm.training import Trainer

    with tempfile.TemporaryDirectory(prefix="ddpm-toy-") as tmp:
        if args.run is not None:
            loaded = load_run(args.run)
            if loaded.config.model_kind != "mlp":
                raise ValueError(f"{loaded.path} is an image model; toy needs a toy2d run (python -m ddpm "
                                 "train --preset toy2d), or no --run to train one here")
        else:
            steps = args.steps or 2000
            config = get_preset("toy2d", steps=steps, toy=args.toy, seed=args.seed, ckpt_every=0,
                                sample_steps=20)  # the run's own sample grid is thrown away with it
            print(f"training a toy2d MLP on {args.toy} for {steps} steps (a few seconds) ...",
                  file=sys.stderr, flush=True)
            Trainer(config, Path(tmp) / "toy", device="cpu", progress=False).fit()
            loaded = load_run(Path(tmp) / "toy")
    toy = loaded.config.data.toy
    points = toy2d(toy, args.n or 2000, seed=args.seed + 1)
    d, g = loaded.diffusion, _generator(args)
    frames = viz.reverse_trajectory(loaded.model, d, (min(len(points), 1000), 2), frames=None, generator=g,
                                    clip_denoised=False)
    return [viz.plot_toy_forward(d, points, generator=g, path=out / f"toy_forward_{toy}.png"),
            viz.plot_toy_reverse(frames, points, path=out / f"toy_reverse_{toy}.png"),
            viz.plot_score_field(loaded.model, d, data=points, path=out / f"toy_score_{toy}.png")]


FIGURES: dict[str, Callable[..., list[Path]]] = {
    "forward": fig_forward,
    "chain": fig_chain,
    "histogram": fig_histogram,
    "schedules": fig_schedules,
    "pitfall": fig_pitfall,
    "embedding": fig_embedding,
    "unet": fig_unet,
    "reverse": fig_reverse,
    "loss-profile": fig_loss_profile,
    "toy": fig_toy,
}
