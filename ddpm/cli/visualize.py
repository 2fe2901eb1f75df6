"""Write figures of the forward and reverse processes, schedules, losses and 2D toys, and print their paths.

    python -m ddpm visualize forward --schedule cosine      # figures/forward_cosine_T1000.png
    python -m ddpm visualize schedules --out-dir tmp
    python -m ddpm visualize reverse --steps 50             # needs a trained model (see --run)

No model needed (drawn on the CPU): forward, chain, histogram, schedules, pitfall, embedding, unet. A trained
image model (--run; default runs/mnist if it has a checkpoint, else the shipped data/pretrained/mnist.pt):
reverse, loss-profile. toy trains a small MLP on a 2D toy set for --steps steps (seconds, on the CPU) unless
--run names a toy2d run. Images come from the test split of the model's data set (MNIST without a model).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ddpm import viz
from ddpm._util import shorten
from ddpm.checkpoints import LoadedRun, build_model, load_run
from ddpm.cli.common import (
    MAX_ECHO,
    UsageError,
    add_device_flags,
    check_output,
    load_image_run,
    nonnegative_int,
    positive_int,
    resolve_condition,
    setup_device,
)
from ddpm.conditions import condition_for_labels
from ddpm.datasets import TOY2D_NAMES, load_dataset, to_float, toy2d
from ddpm.diffusion import GaussianDiffusion
from ddpm.presets import get_preset
from ddpm.samplers import SAMPLERS, default_steps
from ddpm.schedules import make_betas
from ddpm.training import Trainer

__all__ = ["add_arguments", "run", "FIGURES"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``python -m ddpm visualize``; the epilog lists what each choice draws."""
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = "figures:\n" + "\n".join(f"  {name:13s} {fn.__doc__.strip().splitlines()[0]}"
                                        for name, fn in FIGURES.items())
    p.add_argument("what", choices=tuple(FIGURES), help="which figure(s) to write (see below)")
    p.add_argument("--out-dir", default="figures", help="folder for the files (default: figures/)")
    p.add_argument("--run", help="run folder or exported .pt for reverse/loss-profile/toy/unet (default: "
                                 "runs/mnist if present, else data/pretrained/mnist.pt)")
    p.add_argument("--schedule", default="linear",
                   help="beta schedule: linear, cosine, quadratic, sigmoid (default: linear)")
    p.add_argument("--T", type=positive_int, help="diffusion steps (default: 1000; pitfall: 300)")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--steps", type=positive_int, help="reverse: sampling steps (default: T for ancestral, 50 for "
                                                      "ddim, 15 for dpmpp); toy: training steps (default: 2000)")
    p.add_argument("--sampler", choices=SAMPLERS, default="ddim", help="reverse: the sampler (default: ddim)")
    p.add_argument("--n", type=positive_int, help="number of images or points (default depends on the figure)")
    p.add_argument("--class", dest="klass", help="reverse: class label (index or name)")
    p.add_argument("--prompt", help="reverse: text prompt for a text-conditioned model")
    p.add_argument("--toy", choices=TOY2D_NAMES, default="swiss-roll", help="toy: the 2D data set (default: "
                                                                            "swiss-roll)")
    add_device_flags(p)


# the most images (rows) or points a figure can show: more would be a figure no one can read, and memory spent
MAX_N = {"forward": 32, "pitfall": 32, "histogram": 10_000, "chain": 100_000, "reverse": 64, "loss-profile": 10_000,
         "toy": 100_000}


def run(args) -> int:
    """Write the figures of ``args.what`` and print one path per line."""
    device = setup_device(args)
    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out-dir {shorten(out, MAX_ECHO)} is a file, not a folder")
    most = MAX_N.get(args.what)
    if args.n is not None and most is not None and args.n > most:
        raise UsageError(f"--n {args.n:,} is more than the {args.what} figure shows (at most {most:,})")
    torch.manual_seed(args.seed)
    for path in FIGURES[args.what](args, out, device):
        print(path)
    return 0


# ---------------------------------------------------------------------------------------------- helpers
def _outputs(out: Path, *names: str) -> list[Path]:
    """The figure files in --out-dir, checked before any work is done."""
    return [check_output(out / name, (Path(name).suffix,), "--out-dir") for name in names]


def _diffusion(args, default_T: int = 1000) -> GaussianDiffusion:
    # make_betas raises a one-line ValueError listing the known schedules, or saying what is wrong with T
    return GaussianDiffusion(make_betas(args.schedule, args.T or default_T))


def _tag(args, default_T: int = 1000) -> str:
    return f"{args.schedule}_T{args.T or default_T}"


def _mnist(n: int) -> torch.Tensor:
    """The first n images of the MNIST test set: uint8 [n, 1, 28, 28]."""
    return load_dataset("mnist", split="test").images[:n]


def _generator(args, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device).manual_seed(args.seed)


def _on(cond, device: torch.device):
    """A condition on the model's device (prompts stay a list)."""
    return cond.to(device) if isinstance(cond, torch.Tensor) else cond


def _evenly(items: Sequence, k: int) -> list:
    """k items evenly spaced from the first to the last (all of them if there are no more than k)."""
    k = min(k, len(items))
    return [items[round(i * (len(items) - 1) / max(k - 1, 1))] for i in range(k)]


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- no model
def fig_forward(args, out: Path, device: torch.device) -> list[Path]:
    """MNIST digits along one run of the forward Markov chain (rows: images, columns: increasing t)"""
    (path,) = _outputs(out, f"forward_{_tag(args)}.png")
    title = f"forward process (Markov chain, Eq. 2), {args.schedule} schedule, T = {args.T or 1000}"
    return [viz.plot_forward_trajectory(_diffusion(args), _mnist(args.n or 6), generator=_generator(args),
                                        title=title, path=path)]


def fig_chain(args, out: Path, device: torch.device) -> list[Path]:
    """the Markov chain (Eq. 2) against the closed form q(x_t | x_0) (Eq. 4): mean and std at every t"""
    (path,) = _outputs(out, f"chain_vs_closed_{_tag(args)}.png")
    return [viz.plot_chain_vs_closed_form(_diffusion(args), n=args.n or 2000, generator=_generator(args),
                                          path=path)]


def fig_histogram(args, out: Path, device: torch.device) -> list[Path]:
    """pixel histograms of x_t converging to N(0, 1)"""
    (path,) = _outputs(out, f"histogram_{_tag(args)}.png")
    return [viz.plot_pixel_histogram(_diffusion(args), _mnist(args.n or 512), generator=_generator(args),
                                     path=path)]


def fig_schedules(args, out: Path, device: torch.device) -> list[Path]:
    """beta_t, alpha_bar_t, sqrt(alpha_bar_t) and log-SNR of all schedules"""
    T = args.T or 1000
    (path,) = _outputs(out, f"schedules_T{T}.png")
    return [viz.plot_schedules(T=T, path=path)]


def fig_pitfall(args, out: Path, device: torch.device) -> list[Path]:
    """small T without the 1000/T rescale leaves the digit in x_T (--T, default 300)"""
    T = args.T or 300
    (path,) = _outputs(out, f"pitfall_T{T}.png")
    return [viz.plot_small_T_pitfall(T, _mnist(args.n or 6), generator=_generator(args), path=path)]


def fig_embedding(args, out: Path, device: torch.device) -> list[Path]:
    """the sinusoidal timestep embedding as a heat map"""
    T = args.T or 1000
    (path,) = _outputs(out, f"timestep_embedding_T{T}.png")
    return [viz.plot_timestep_embedding(128, T, path=path)]


def fig_unet(args, out: Path, device: torch.device) -> list[Path]:
    """the U-Net's stages: resolution and channels (the --run's network, else the mnist preset's)"""
    if args.run is not None:
        loaded = load_run(args.run)
        model, config = loaded.model, loaded.config
    else:
        config = get_preset("mnist")
        model = build_model(config)
    if config.network != "unet":
        raise UsageError(f"{shorten(args.run, MAX_ECHO)} is a run of kind {config.kind!r} (network: "
                         f"{type(model).__name__}), not a U-Net: give --run a U-Net run such as "
                         f"data/pretrained/mnist.pt or unCLIP's decoder data/pretrained/mnist-decoder.pt, or no --run "
                         f"(the mnist preset's U-Net)")
    (path,) = _outputs(out, f"unet_{config.preset}.png")
    m = config.model
    x = torch.randn(1, m.in_channels, m.image_size, m.image_size)
    extra = {}  # a super-resolution U-Net also takes the low-res image and its augmentation step
    if m.low_res_channels:
        extra = dict(low_res=torch.zeros(1, m.low_res_channels, m.image_size, m.image_size), aug_t=torch.tensor([0]))
    shapes = viz.trace_shapes(model, x, torch.tensor([0]), None, **extra)
    return [viz.plot_unet_shapes(shapes, path=path)]


# ---------------------------------------------------------------------------------------------- a trained model
def _reverse_condition(loaded: LoadedRun, args) -> tuple[object, int]:
    """(cond, n) for the reverse figure: --class, --prompt, or a few classes for a conditional model."""
    n = args.n or 8
    cond, _, _ = resolve_condition(loaded, n, args.klass, args.prompt)
    if cond is not None:
        cond = cond[:n]
        n = len(cond)
    return cond, n


def fig_reverse(args, out: Path, device: torch.device) -> list[Path]:
    """a trained model's reverse process: x_t beside the predicted x_0 (PNG) and the animation (GIF)"""
    loaded = load_image_run(args.run, device, text=args.prompt is not None)
    T = loaded.diffusion.T
    steps = args.steps or default_steps(args.sampler, T)
    if steps > T:
        raise UsageError(f"--steps {steps} is more than the model's T = {T}")
    name = f"reverse_{args.sampler}{steps}"
    png, gif = _outputs(out, f"{name}.png", f"{name}.gif")
    cond, n = _reverse_condition(loaded, args)
    guidance = loaded.config.train.guidance if cond is not None else None
    _say(f"sampling {n} images with {args.sampler}, {steps} steps, from step {loaded.step} of {loaded.path}")
    trajectory = viz.reverse_trajectory(loaded.model, loaded.diffusion, (n, *loaded.shape), _on(cond, device),
                                        sampler=args.sampler, steps=steps, frames=None, guidance_scale=guidance,
                                        generator=_generator(args, device), **loaded.sampler_options())
    title = f"reverse process ({args.sampler}, {steps} steps): $x_t$ and the predicted $x_0$"
    if tuple(loaded.image_shape) != tuple(loaded.shape):  # samples that are decoded (a latent run's): decoded
        trajectory = viz.decode_steps(trajectory, loaded.decode)
        title = f"reverse process ({args.sampler}, {steps} steps): decoded $z_t$ and decoded predicted $z_0$"
    return [viz.plot_reverse_trajectory(_evenly(trajectory, 9), n_images=min(n, 4), title=title, path=png),
            viz.save_reverse_animation(_evenly(trajectory, 40), gif, nrow=min(n, 8), show_pred_x0=True)]


def fig_loss_profile(args, out: Path, device: torch.device) -> list[Path]:
    """a trained model's L_simple loss at each timestep, on test images of its data set"""
    (path,) = _outputs(out, "loss_profile.png")
    loaded = load_image_run(args.run, device)
    dataset = loaded.config.data.dataset
    data = load_dataset(dataset, split="test", root=loaded.config.data.root)
    n = args.n or 64
    images, labels = data.images[:n], (data.labels[:n] if data.labels is not None else None)
    if labels is None and loaded.cond != "none":
        raise UsageError(f"{loaded.path} is conditional but the {dataset} test set has no labels")
    # the canonical condition of each label (class ids or class prompts): the same for every --seed
    cond = condition_for_labels(loaded.cond, labels, loaded.label_names, dataset)
    with torch.no_grad():  # what the diffusion models: the images, or a latent run's latents of them
        images = loaded.config.hook.encode(loaded.frozen, to_float(images).to(device))
    _say(f"evaluating the loss of {loaded.path} (step {loaded.step}) on {len(images)} test images at 40 timesteps")
    ts, losses = viz.loss_profile(loaded.model, loaded.diffusion, images, _on(cond, device),
                                  generator=_generator(args, device))
    return [viz.plot_loss_profile(ts, losses, title=f"loss per timestep, {loaded.path} (step {loaded.step})",
                                  path=path)]


# ---------------------------------------------------------------------------------------------- 2D toys
def _load_toy_run(run: str) -> LoadedRun:
    loaded = load_run(run)
    if loaded.config.data.dataset != "toy2d":
        raise UsageError(f"{loaded.path} is an image model; toy needs a toy2d run (python -m ddpm train "
                         "--preset toy2d), or no --run to train one here")
    return loaded


def _train_toy(args) -> LoadedRun:
    """A toy2d MLP trained on --toy for --steps steps, on the CPU, in a folder thrown away afterwards."""
    steps = args.steps or 2000
    config = get_preset("toy2d", steps=steps, toy=args.toy, seed=args.seed, ckpt_every=0)
    _say(f"training a toy2d MLP on {args.toy} for {steps} steps (a few seconds) ...")
    with tempfile.TemporaryDirectory(prefix="ddpm-toy-") as tmp:
        Trainer(config, Path(tmp) / "toy", device="cpu", progress=False).fit(final_samples=False)
        return load_run(Path(tmp) / "toy")


def fig_toy(args, out: Path, device: torch.device) -> list[Path]:
    """2D toy: forward diffusion of the points, particle trajectories, and the learned eps field"""
    loaded = _load_toy_run(args.run) if args.run is not None else None
    toy = loaded.config.data.toy if loaded is not None else args.toy
    forward, reverse, score = _outputs(out, *(f"toy_{kind}_{toy}.png" for kind in ("forward", "reverse", "score")))
    loaded = loaded or _train_toy(args)
    points = toy2d(toy, args.n or 2000, seed=args.seed + 1)
    d, g = loaded.diffusion, _generator(args)
    trajectory = viz.reverse_trajectory(loaded.model, d, (min(len(points), 1000), 2), frames=None, generator=g,
                                        threshold="none")
    return [viz.plot_toy_forward(d, points, generator=g, path=forward),
            viz.plot_toy_reverse(trajectory, points, path=reverse),
            viz.plot_score_field(loaded.model, d, data=points, path=score)]


FIGURES: dict[str, Callable[[argparse.Namespace, Path, torch.device], list[Path]]] = {
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
