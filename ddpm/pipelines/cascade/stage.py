"""A cascade (Ho et al. 2021, "Cascaded Diffusion Models"; Saharia et al. 2022, Imagen): a base model generates
small images and a super-resolution diffusion model refines them. Both stages are ordinary runs: the same
GaussianDiffusion, U-Net, samplers, Trainer and checkpoints; the second one's U-Net (``low_res_channels`` = 1)
also sees the low-res image, and how noisy that image was made.

    training (SR)  x (28x28) -> low = area average to 14x14 -> up = bicubic back to 28x28
                   -> noise conditioning augmentation: z_s = q(z_s | up) = sqrt(abar_s) up + sqrt(1 - abar_s) eps
                      after s = round(a T) steps of the SR model's own forward process, a ~ U[0, aug_max] per
                      image (s = 0: the clean image)
                   -> L_simple on x with eps_theta([x_t, z_s], t, s, prompt)  (prompt dropped 10% for guidance)
    sampling       base sample (14x14) -> up -> z_s at one fixed level a -> any sampler on the SR model -> 28x28

Why augment: in training the SR model sees low-res images made from real digits; in a cascade it gets the base
model's samples, which differ from those in ways it has never seen. Noise hides the difference, the model learns
to rely less on fine low-res detail, and telling it s lets it know how much to trust the input (Ho et al.
2021, Sec. 4.1). What it does here: docs/results.md, "Cascade". Classifier-free guidance drops only the prompt:
the low-res image is part of the model's input (``WithLowRes``), the same in the conditional and null calls.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ddpm.checkpoints import LoadedRun
from ddpm.conditions import condition_for_labels
from ddpm.datasets import area_downsample, bicubic_to, to_float, upsample
from ddpm.diffusion import GaussianDiffusion
from ddpm.pipelines.base import GridInputs, Kind, Sampling
from ddpm.viz import save_grid

__all__ = ["SuperResConfig", "SuperResKind", "REFINE_SAMPLING", "upsample", "bicubic_to", "low_res_input",
           "aug_steps", "noise_augment", "WithLowRes", "training_model", "Refiner", "shared_options", "check_cascade",
           "DEFAULT_AUG_LEVEL"]

DEFAULT_AUG_LEVEL = 0.1  # sampling: Imagen's best samples used 0.1-0.3; measured here in docs/results.md, "Cascade"
# The SR stage samples stochastically by default (DDIM with eta = 1, i.e. ancestral steps on a respaced process):
# deterministic samplers leave background speckle in some of its samples (docs/results.md, "Cascade")
REFINE_SAMPLING = Sampling("ddim", 15, None, {"eta": 1.0})


@dataclass(frozen=True)
class SuperResConfig:
    """The super-resolution stage of a cascade (Config.stage of kind "super-res"; Ho et al. 2021, Saharia et al.
    2022).

    The U-Net (``low_res_channels`` = 1) denoises the full-size image given the image shrunk to ``low_res`` (area
    averaging, as the base model's data) and upsampled back (bicubic). Noise conditioning augmentation: in
    training, each low-res input first goes through the forward process for s = round(a T) steps, with the
    level a ~ U[0, aug_max] per image, and the network is told s; aug_max 0 trains without augmentation (the
    ablation). Sampling picks a fixed level (--aug-level).
    """

    low_res: int = 14
    aug_max: float = 0.5

    def __post_init__(self) -> None:
        if self.low_res < 1:
            raise ValueError(f"low_res must be a positive side length, got {self.low_res}")
        if not 0.0 <= self.aug_max <= 1.0:
            raise ValueError(f"aug_max is a fraction of the forward process, in [0, 1], got {self.aug_max}")


def low_res_input(x: Tensor, low_res: int) -> Tensor:
    """What the SR model is given for full-size images x: x area-averaged to low_res, bicubic back to x's size."""
    return upsample(area_downsample(x, low_res), x.shape[-1])


def aug_steps(level: float | Tensor, T: int) -> Tensor:
    """The augmentation level a in [0, 1] as a number of forward steps s = round(a T) (0: no augmentation)."""
    level = torch.as_tensor(level, dtype=torch.float64)
    if not bool(((level >= 0) & (level <= 1)).all()):
        raise ValueError(f"augmentation levels are in [0, 1] (a fraction of the forward process), got {level}")
    return torch.round(level * T).long()


def noise_augment(diffusion: GaussianDiffusion, x: Tensor, s: Tensor,
                  generator: torch.Generator | None = None) -> Tensor:
    """z_s ~ q(z_s | x) (Eq. 4 with x as z_0) after s [B] forward steps; s = 0 leaves the image as it is."""
    s = s.to(x.device)
    noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
    noisy = diffusion.q_sample(x, (s - 1).clamp(min=0), noise)  # index s - 1 is the paper's step s
    return torch.where((s > 0).view(-1, 1, 1, 1), noisy, x)


class WithLowRes:
    """model(x_t, t, cond) of a super-resolution U-Net with its (augmented) low-res input fixed: the callable
    that L_simple and every sampler expect. A call on a stacked batch [x_t; x_t] (batched guidance) gets the
    low-res input repeated to match."""

    def __init__(self, net, low_res: Tensor, aug_s: Tensor):
        self.net, self.low_res, self.aug_s = net, low_res, aug_s

    def __call__(self, x_t: Tensor, t: Tensor, cond=None) -> Tensor:
        k = x_t.shape[0] // self.low_res.shape[0]
        return self.net(x_t, t, cond, low_res=self.low_res.repeat(k, 1, 1, 1), aug_t=self.aug_s.repeat(k))


def training_model(net, diffusion: GaussianDiffusion, x0: Tensor, sr: SuperResConfig) -> WithLowRes:
    """The SR network for one training batch x0: each image's low-res input augmented to a level a ~ U[0,
    aug_max] (drawn from the global RNG, like the rest of a step)."""
    s = torch.round(torch.rand(x0.shape[0], device=x0.device) * (sr.aug_max * diffusion.T)).long()  # round(a T)
    return WithLowRes(net, noise_augment(diffusion, low_res_input(x0, sr.low_res), s), s)


@dataclass
class Refiner:
    """The second stage of a cascade, ready to refine: a loaded super-resolution run and how to sample it.

    ``refiner(low, cond, generator)``: low-res images [B, C, low, low] in [-1, 1] (a base model's samples, or
    real digits shrunk) and their conditions -> refined images [B, C, H, W]. sampling: the sampler, steps,
    guidance (None: the SR run's own train.guidance) and options; default REFINE_SAMPLING (DDIM, eta = 1)."""

    run: LoadedRun
    aug_level: float = DEFAULT_AUG_LEVEL
    sampling: Sampling = REFINE_SAMPLING

    def __post_init__(self) -> None:
        if self.run.config.kind != "super-res":
            raise ValueError(f"{self.run.path} is not a super-resolution model (preset {self.run.config.preset!r}); "
                             f"the cascade's second stage is one trained with --preset mnist-sr28")
        aug_steps(self.aug_level, self.run.diffusion.T)  # checks the range

    @property
    def low_res(self) -> int:
        return self.run.config.stage.low_res

    @torch.no_grad()
    def __call__(self, low: Tensor, cond=None, generator: torch.Generator | None = None) -> Tensor:
        run, size = self.run, self.run.config.model.image_size
        device = run.diffusion.betas.device
        if tuple(low.shape[-2:]) != (self.low_res, self.low_res):
            raise ValueError(f"{run.path} refines {self.low_res}x{self.low_res} images, got "
                             f"{low.shape[-2]}x{low.shape[-1]}")
        s = aug_steps(self.aug_level, run.diffusion.T).expand(low.shape[0]).to(device)
        z = noise_augment(run.diffusion, upsample(low.to(device).float(), size), s, generator)
        return run.sample(cond, low.shape[0], self.sampling, generator, model=WithLowRes(run.model, z, s))


SHARED_OPTIONS = ("spacing", "threshold", "percentile", "precision")  # sampler options that apply to both stages


def shared_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """The base stage's sampler options that the SR stage takes too (not a sampler's own, like DDIM's eta)."""
    return {k: v for k, v in (options or {}).items() if k in SHARED_OPTIONS and v is not None}


def check_cascade(base: LoadedRun, sr: LoadedRun) -> None:
    """One line on why two runs do not make a cascade (the base's images are not the SR model's low-res input,
    or they take different conditions); nothing when they do."""
    if sr.config.kind != "super-res":
        raise ValueError(f"{sr.path} is not a super-resolution model; --sr takes one trained with "
                         f"--preset mnist-sr28")
    want = (sr.config.model.in_channels, sr.config.stage.low_res, sr.config.stage.low_res)
    if tuple(base.image_shape) != want:
        raise ValueError(f"{base.path} makes {'x'.join(map(str, base.image_shape))} images but {sr.path} refines "
                         f"{'x'.join(map(str, want))} ones; use a base trained with --preset mnist-base14")
    if sr.cond != "none" and base.cond != sr.cond:
        raise ValueError(f"{base.path} is conditioned on {base.cond} but {sr.path} on {sr.cond}: the cascade passes "
                         f"the base's condition to both stages")


class SuperResKind(Kind):
    """A cascade's second stage: L_simple on full-size images given their noise-augmented low-res version."""

    name = "super-res"
    section = SuperResConfig
    evaluation = "ddpm.pipelines.cascade.evaluate"

    def check(self, config) -> None:
        if not isinstance(config.stage, SuperResConfig) or getattr(config.model, "low_res_channels", 0) < 1:
            raise ValueError(f"a super-resolution run needs a SuperResConfig stage and a U-Net with low_res_channels "
                             f"> 0, got stage={config.stage} and {type(config.model).__name__}")
        if config.stage.low_res >= config.model.image_size:
            raise ValueError(f"super-resolution goes up: low_res {config.stage.low_res} must be smaller than the "
                             f"U-Net's image_size {config.model.image_size}")

    def training_inputs(self, net, diffusion, frozen, config, x0, cond, t):
        if t is None:  # t first, then the augmentation levels (the order of the random draws of a step)
            t = diffusion.sample_timesteps(x0.shape[0], device=x0.device)
        return training_model(net, diffusion, x0, config.stage), x0, cond, t

    def sampling(self, config) -> Sampling:
        return REFINE_SAMPLING

    def grid(self, g: GridInputs, path: Path) -> Path:
        """Training digits shrunk, refined, and as they were."""
        config = g.config
        x = to_float(g.images[:8]).to(g.device)
        low = area_downsample(x, config.stage.low_res)
        cond = condition_for_labels(config.cond, g.labels[:8], g.label_names, config.data.dataset)
        run = LoadedRun(g.model, g.diffusion, config, g.step, path)
        refiner = Refiner(run, sampling=dataclasses.replace(REFINE_SAMPLING, guidance=config.train.guidance))
        refined = refiner(low, cond.to(g.device) if isinstance(cond, torch.Tensor) else cond,
                          torch.Generator(g.device).manual_seed(1234))
        nearest = F.interpolate(low, size=x.shape[-2:], mode="nearest")
        return save_grid(torch.cat([nearest, refined.clamp(-1, 1), x]), path, nrow=8)

    def usage(self, run):
        return (f"{run.path} is a super-resolution model (a cascade's second stage): it refines low-res digits; use "
                f"python -m ddpm cascade --sr {run.path} (after the base runs/mnist-base14, or with --from-test)")

    def next_steps(self, config, run_dir):
        return (f"python -m ddpm evaluate --run {run_dir}; python -m ddpm cascade --sr {run_dir} --prompt "
                f"\"a thick seven\"")
