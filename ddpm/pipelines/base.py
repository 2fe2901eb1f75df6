"""The stage hook: what a kind of run tells the core, and the registry that finds it.

Every run has a kind (``Config.kind``). "ddpm" is the paper's: a network that denoises the data itself. The
systems built on it (one folder each under ddpm/pipelines/) add kinds of their own: latent diffusion's
"autoencoder" and "latent", the cascade's "super-res", unCLIP's "clip", "prior" and "decoder". The core (config,
checkpoints, training, metrics, bench, cli) never asks which kind a run is; it asks the run's Kind:

    networks, section        which network classes it builds, its own config section (Config.stage)
    attach, load_frozen      the frozen network it builds on (a latent run's autoencoder, an unCLIP stage's CLIP)
    fits, captions_vocab,
    loader_options           what its training data must be
    training_inputs, loss    what Algorithm 1 feeds the network, and the loss (an autoencoder's is its own)
    on_stop                  what a run does when it stops (an autoencoder measures its latent scale)
    sampling, decode         how it is sampled by default, and how samples become images (or embeddings)
    grid                     the picture a training run draws of its progress
    usage, evaluation,
    next_steps               where the command line sends it, how it is judged, what to do after training

The base class below is the plain DDPM: every method is what the paper does, and a pipeline's Kind overrides
only what differs. KINDS names each folder once: deleting a folder and its line leaves a working DDPM.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ddpm.improved import improved_losses
from ddpm.nn.mlp import MLP, MLPConfig
from ddpm.nn.unet import UNet, UNetConfig
from ddpm.samplers import ddim_sample
from ddpm.viz import class_grid, plot_points, save_grid

if TYPE_CHECKING:  # pragma: no cover
    from ddpm.checkpoints import LoadedRun
    from ddpm.config import Config
    from ddpm.diffusion import GaussianDiffusion

__all__ = ["Kind", "Sampling", "kind", "kind_names", "FOLDERS", "GridInputs", "stochastic_guidance"]

# the folders of the systems built on DDPM, each with a KINDS dict in its __init__.py: one line per folder
FOLDERS = ("ddpm.pipelines.latent", "ddpm.pipelines.cascade", "ddpm.pipelines.unclip")


@dataclass(frozen=True)
class Sampling:
    """How a run is sampled: the sampler, its steps (None: the sampler's default), the guidance scale (None: the
    run's own train.guidance) and the sampler's other keyword arguments (eta, threshold, spacing, precision...)."""

    sampler: str = "ddim"
    steps: int | None = None
    guidance: float | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def with_options(self, **options: Any) -> Sampling:
        """A copy whose options are updated by those given that are not None."""
        return self.override(options=options)

    def override(self, sampler: str | None = None, steps: int | None = None, guidance: float | None = None,
                 options: dict[str, Any] | None = None) -> Sampling:
        """This sampling (a stage's default) with what a user gave, None keeping the default's: another sampler
        takes its own default steps and leaves the default's options (DDIM's eta) behind."""
        same = sampler is None or sampler == self.sampler
        return Sampling(sampler or self.sampler, steps if steps is not None else self.steps if same else None,
                        guidance if guidance is not None else self.guidance,
                        {**(self.options if same else {}),
                         **{k: v for k, v in (options or {}).items() if v is not None}})


def stochastic_guidance(scale: float) -> float:
    """The guidance scale for a stochastic sampler that matches ``scale`` with a deterministic one: half the
    extrapolation w = s - 1 (each stochastic step's fresh noise is guided again, so the same s pushes further:
    on the shipped MNIST models SDE-DPM-Solver++ at s = 2 drew bolder, less varied digits, Frechet distance twice
    the ODE solver's; at 1.5 the same as the ODE solver's at 2; docs/results.md, "Speckle")."""
    return 1 + (scale - 1) / 2


@dataclass
class GridInputs:
    """What a training grid may draw from: the EMA network, its process, the run's labels and training images."""

    model: nn.Module
    diffusion: GaussianDiffusion
    config: Config
    step: int
    label_names: tuple[str, ...]
    images: Tensor | None
    labels: Tensor | None
    frozen: nn.Module | None
    device: Any


class Kind:
    """The plain DDPM (Ho et al. 2020): a U-Net (or a toy MLP) trained on L_simple of the data, sampled from
    N(0, I). A pipeline subclasses it and overrides what its kind of run does differently."""

    name = "ddpm"
    networks: dict[str, tuple[type, type]] = {"unet": (UNetConfig, UNet), "mlp": (MLPConfig, MLP)}
    section: type | None = None  # the kind's own config section (a frozen dataclass), kept in Config.stage
    frozen_field: str | None = None  # the section's field that names the frozen network's file ("autoencoder")

    # ------------------------------------------------------------------ config
    def check(self, config: Config) -> None:
        """Raise a ValueError when the config's parts do not make a run of this kind."""
        if (config.stage is None) != (self.section is None) or (
                self.section is not None and not isinstance(config.stage, self.section)):
            want = self.section.__name__ if self.section is not None else "none"
            raise ValueError(f"a {self.name!r} run takes stage={want}, got {type(config.stage).__name__}")
        if getattr(config.model, "low_res_channels", 0) or config.cond == "embedding":
            raise ValueError(f"a {self.name!r} run has no low-res input and no embedding condition; that U-Net is "
                             f"a super-resolution model's or an unCLIP decoder's (kind 'super-res' or 'decoder')")

    def sampler_defaults(self, config: Config) -> dict[str, Any]:
        """Sampler options that differ from the samplers' defaults (a latent's or an embedding's pred_x0 is not
        pixels in [-1, 1], so it is not clipped)."""
        return {}

    # ------------------------------------------------------------------ the frozen network it builds on
    def attach(self, config: Config, device) -> tuple[nn.Module | None, Config]:
        """For training: (the frozen network this run builds on or None, the config with its fingerprint)."""
        return None, config

    def load_frozen(self, config: Config, relative_to: Path | None, device) -> nn.Module | None:
        """For a loaded run: its frozen network, found beside ``relative_to`` (the run's own file) if need be."""
        return None

    # ------------------------------------------------------------------ training
    def fits(self, config: Config, frozen: nn.Module | None) -> tuple[int, int]:
        """(channels, side) of the training images this run takes."""
        return config.model.in_channels, config.model.image_size

    def captions_vocab(self, config: Config, frozen: nn.Module | None) -> tuple[str, ...] | None:
        """The vocabulary of the captions a training batch draws, or None for a run without captions."""
        return config.model.vocab if config.cond == "text" else None

    def loader_options(self, config: Config, frozen: nn.Module | None, images: Tensor) -> dict[str, Any]:
        """Extra BatchLoader arguments (a latent run's cached posterior moments)."""
        return {}

    def training_inputs(self, net, diffusion: GaussianDiffusion, frozen: nn.Module | None, config: Config,
                        x0: Tensor, cond, t: Tensor | None) -> tuple[Any, Tensor, Any, Tensor | None]:
        """(the network as the loss calls it, x_0, the condition, t) for a batch of training data; t None lets
        the loss draw it."""
        return net, x0, cond, t

    def loss(self, net, diffusion: GaussianDiffusion, config: Config, x0: Tensor, cond, t: Tensor | None,
             noise: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """(per-example losses [B], t [B]): L_simple at t ~ U{0..T-1} (Algorithm 1), or the config's loss of
        Improved DDPM (ddpm.improved: L_hybrid, L_vlb) at t given by the trainer's timestep sampler."""
        if t is None:
            t = diffusion.sample_timesteps(x0.shape[0], device=x0.device)
        if config.diffusion.loss != "simple":
            return improved_losses(net, diffusion, x0, cond, t, noise, config.diffusion.loss), t
        losses = diffusion.training_loss(net, x0, cond, t=t, noise=noise, reduction="none",
                                         min_snr_gamma=config.diffusion.min_snr_gamma)
        return losses, t

    def on_stop(self, models: tuple[nn.Module, ...], images: Tensor | None) -> None:
        """Called with (the raw, the EMA network) before the final checkpoint is written."""

    # ------------------------------------------------------------------ sampling
    def sampling(self, config: Config) -> Sampling:
        """How this kind is sampled when the caller says nothing else (``sample``'s default; LoadedRun.sample adds
        sampler_defaults): the stochastic DPM-Solver++(2M) at its default steps (25), guided with half the run's
        extrapolation (s = 1 + (train.guidance - 1) / 2: 1.5 for the default 2), which leaves the backgrounds as
        clean as real digits at the deterministic solver's Frechet distance (docs/results.md, "Speckle")."""
        return Sampling("dpmpp-2m-sde", None, stochastic_guidance(config.train.guidance))

    def encode(self, frozen: nn.Module | None, images: Tensor) -> Tensor:
        """Images in [-1, 1] as what the diffusion models (a latent run's latents: posterior means, scaled)."""
        return images

    def decode(self, frozen: nn.Module | None, x: Tensor) -> Tensor:
        """What a sample becomes: images in [-1, 1] (a latent run's latents decoded), else x itself."""
        return x

    def image_shape(self, config: Config, frozen: nn.Module | None) -> tuple[int, ...]:
        """One decoded sample's shape."""
        return config.sample_shape

    def grid(self, g: GridInputs, path: Path) -> Path:
        """One row of DDIM samples per class (guided), or a 2D toy's points."""
        config, tc = g.config, g.config.train
        if config.data.dataset == "toy2d":
            x = ddim_sample(g.model, g.diffusion, (2000, *config.sample_shape), steps=tc.sample_steps,
                            generator=torch.Generator(g.device).manual_seed(1234), device=g.device, threshold="none")
            return plot_points(x, title=f"{config.data.toy}, step {g.step}", path=path)
        m = config.model
        x, nrow = class_grid(g.model, g.diffusion, config.sample_shape, m.cond, g.label_names, config.data.dataset,
                             getattr(m, "num_classes", 0), steps=tc.sample_steps, guidance=tc.guidance,
                             device=g.device, **self.sampler_defaults(config))
        return save_grid(self.decode(g.frozen, x).clamp(-1, 1), path, nrow=nrow)

    # ------------------------------------------------------------------ what the command line does with it
    def usage(self, run: LoadedRun) -> str | None:
        """None when ``python -m ddpm sample`` draws this run, else one line saying what to use instead."""
        if run.config.data.dataset == "toy2d":
            return f"{run.path} is a 2D toy model: see python -m ddpm visualize toy --run {run.path}"
        return None

    # the module of the kind's own judgement, if any (metrics layer: its evaluate_stage and stage_rows)
    evaluation: str | None = None

    def next_steps(self, config: Config, run_dir: Path) -> str | None:
        """What train prints after the run: the command that uses it."""
        return None


BASE = Kind()
_KINDS: dict[str, Kind] = {}


def _registry() -> dict[str, Kind]:
    """name -> Kind: "ddpm", then each folder's KINDS (imported when a kind is first asked for)."""
    if not _KINDS:
        found = {"ddpm": BASE}
        for folder in FOLDERS:
            found.update(importlib.import_module(folder).KINDS)
        _KINDS.update(found)
    return _KINDS


def kind(name: str) -> Kind:
    """The Kind of that name; a ValueError listing the known ones otherwise."""
    registry = _registry()
    if name not in registry:
        raise ValueError(f"unknown kind of run {name!r}; known kinds: {', '.join(registry)}")
    return registry[name]


def kind_names() -> tuple[str, ...]:
    return tuple(_registry())
