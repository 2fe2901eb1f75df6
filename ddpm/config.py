"""Configuration: one frozen dataclass per component, and a Config that holds them (the named presets are in
ddpm.presets, importable from here too).

    from ddpm.presets import get_preset
    config = get_preset("mnist", steps=500)          # top-level TrainConfig fields as overrides
    config.to_dict() / Config.from_dict(d)           # plain dicts for config.json and checkpoints

No globals are mutated and nothing is read from the environment: a run is fully described by its Config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from ddpm._util import check_mode, dataclass_from_dict
from ddpm.datasets import caption_max_words, caption_vocabulary, dataset_label_names
from ddpm.diffusion import PREDICTIONS
from ddpm.nn.autoencoder import AutoencoderConfig
from ddpm.nn.clip import ClipConfig
from ddpm.nn.mlp import MLPConfig
from ddpm.nn.prior import PriorConfig
from ddpm.nn.unet import UNetConfig
from ddpm.schedules import SCHEDULES

DatasetName = Literal["mnist", "fashion-mnist", "cifar10", "toy2d"]
Optimizer = Literal["adam", "adamw"]
LRSchedule = Literal["constant", "cosine"]
TrainPrecision = Literal["fp32", "bf16", "auto"]

__all__ = ["DataConfig", "DiffusionConfig", "TrainConfig", "LatentConfig", "SuperResConfig", "UnclipConfig", "Config",
           "resume_changes", "RESUMABLE_CHANGES", "with_conditioning", "MODEL_KINDS"]


@dataclass(frozen=True)
class DataConfig:
    """Where the training images come from."""

    dataset: DatasetName = "mnist"
    root: str | None = None  # the data folder (None: the repository's data/)
    hflip: bool = False  # random horizontal flips (the paper's CIFAR-10 augmentation; not for digits)
    toy: str = "swiss-roll"  # for dataset="toy2d": see ddpm.datasets.TOY2D_NAMES
    toy_size: int = 20000  # points drawn for a 2D toy data set
    image_size: int | None = None  # shrink the images to this side by area averaging (a cascade's base: 14)

    def __post_init__(self) -> None:
        check_mode(self.dataset, get_args(DatasetName), "dataset")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"image_size must be a positive side length (or None), got {self.image_size}")


@dataclass(frozen=True)
class DiffusionConfig:
    """The forward process and the parameterization (defaults: the paper's)."""

    schedule: str = "linear"
    T: int = 1000
    prediction: str = "eps"
    zero_terminal_snr: bool = False
    min_snr_gamma: float | None = None  # Hang et al. 2023 loss weighting (5.0 is theirs); None = L_simple

    def __post_init__(self) -> None:
        check_mode(self.schedule, tuple(SCHEDULES), "schedule")
        check_mode(self.prediction, PREDICTIONS, "prediction")


@dataclass(frozen=True)
class TrainConfig:
    """The optimization and bookkeeping of a training run (defaults: the paper's CIFAR-10 run)."""

    steps: int = 800_000
    batch_size: int = 128  # global batch (split across DDP ranks)
    lr: float = 2e-4
    cond_lr_scale: float = 1.0  # the conditioner's (text encoder's) learning rate, as a multiple of lr; 0 freezes it
    optimizer: Optimizer = "adam"
    weight_decay: float = 0.0
    warmup: int = 5000  # linear LR warmup steps
    lr_schedule: LRSchedule = "constant"  # after warmup: constant (paper) or cosine decay to 0
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    ema_warmup: bool = True  # decay_k = min(ema_decay, (1 + k) / (10 + k)): early EMA is not stale noise
    seed: int = 0
    log_every: int = 50
    sample_every: int = 0  # write a sample grid every N steps (0: only at the end)
    ckpt_every: int = 1000
    sample_steps: int = 50  # DDIM steps for the grids written during training
    guidance: float = 2.0  # guidance scale for those grids (conditional models)
    compile: bool = False  # torch.compile the model
    # bf16 autocast for the forward pass (mixed precision: weights, gradients and Adam stay fp32): "auto" where
    # the device has bf16 units (CUDA Ampere or newer, CPUs with AVX512-BF16 or AMX), "bf16" always, "fp32" never
    precision: TrainPrecision = "auto"

    def __post_init__(self) -> None:
        check_mode(self.optimizer, get_args(Optimizer), "optimizer")
        check_mode(self.lr_schedule, get_args(LRSchedule), "lr_schedule")
        check_mode(self.precision, get_args(TrainPrecision), "precision")
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"steps, batch_size and lr must be positive, got {self.steps}, {self.batch_size}, "
                             f"{self.lr}")
        if not 0.0 <= self.cond_lr_scale <= 1.0:
            raise ValueError(f"cond_lr_scale must be in [0, 1] (a multiple of lr), got {self.cond_lr_scale}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")


@dataclass(frozen=True)
class LatentConfig:
    """The first stage of a latent diffusion run: the trained autoencoder whose scaled latents the DDPM models.

    autoencoder: its run folder or exported .pt (a relative path is looked up from the current folder, then
    beside the latent model's own file). fingerprint: the SHA-256 of its weights (ddpm.checkpoints.
    weights_fingerprint), filled in when training starts; loading refuses an autoencoder whose weights differ.
    cache: encode the training images once (posterior mean and log-variance, kept in memory) and draw
    z ~ q(z | x) from them each step, instead of running the encoder on every batch.
    scale: None uses the autoencoder's measured latent_scale (1 / std of its latents); a number replaces it
    (the ablation that shows what a wrong signal-to-noise ratio does: docs/results.md, "Latent diffusion").
    """

    autoencoder: str = "runs/mnist-autoencoder"
    fingerprint: str | None = None
    cache: bool = True
    scale: float | None = None

    def __post_init__(self) -> None:
        if self.scale is not None and not self.scale > 0:
            raise ValueError(f"the latent scale must be positive, got {self.scale}")


@dataclass(frozen=True)
class SuperResConfig:
    """The super-resolution stage of a cascade (ddpm.pipelines.cascade; Ho et al. 2021, Saharia et al. 2022).

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


@dataclass(frozen=True)
class UnclipConfig:
    """The CLIP that a stage of unCLIP is built on (ddpm.pipelines.unclip): a diffusion prior models its image
    embeddings given its text embeddings; a decoder turns its image embeddings into images.

    clip: its run folder or exported .pt (looked up as LatentConfig.autoencoder is); fingerprint: the SHA-256 of
    its weights, filled in when training starts; loading refuses a CLIP whose weights differ, and a pipeline refuses
    a prior and a decoder built on different CLIPs.
    """

    clip: str = "runs/mnist-clip"
    fingerprint: str | None = None


MODEL_KINDS = {"unet": UNetConfig, "mlp": MLPConfig, "autoencoder": AutoencoderConfig, "clip": ClipConfig,
               "prior": PriorConfig}


@dataclass(frozen=True)
class Config:
    """Everything that defines a run: data, network, diffusion and training; for a latent DDPM, the first stage."""

    preset: str
    data: DataConfig = field(default_factory=DataConfig)
    model: UNetConfig | MLPConfig | AutoencoderConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    latent: LatentConfig | None = None
    super_res: SuperResConfig | None = None
    unclip: UnclipConfig | None = None

    def __post_init__(self) -> None:
        on_clip = isinstance(self.model, PriorConfig) or self.cond == "embedding"
        if (self.unclip is not None) != on_clip:
            raise ValueError(f"an unCLIP prior or decoder (cond='embedding') needs unclip (its CLIP), and only they "
                             f"have one; got unclip={self.unclip} for a {self.model_kind} with cond={self.cond!r}")
        low_res_channels = getattr(self.model, "low_res_channels", 0)
        if (self.super_res is not None) != (low_res_channels > 0):
            raise ValueError(f"a super-resolution run needs both super_res and a U-Net with low_res_channels > 0, "
                             f"got super_res={self.super_res} and low_res_channels={low_res_channels}")
        if self.super_res is not None and self.super_res.low_res >= self.model.image_size:
            raise ValueError(f"super-resolution goes up: low_res {self.super_res.low_res} must be smaller than the "
                             f"U-Net's image_size {self.model.image_size}")

    @property
    def model_kind(self) -> str:
        return next(k for k, cls in MODEL_KINDS.items() if isinstance(self.model, cls))

    @property
    def cond(self) -> str:
        """The network's conditioning: "none", "class" or "text" ("none" for a network that takes no condition)."""
        return getattr(self.model, "cond", "none")

    @property
    def is_diffusion(self) -> bool:
        """False for the networks trained on a loss of their own (an autoencoder, a CLIP), not the diffusion loss."""
        return self.model_kind not in ("autoencoder", "clip")

    @property
    def unclip_stage(self) -> str | None:
        """"prior" or "decoder" for the two diffusion stages of unCLIP (both built on a CLIP), else None."""
        if self.unclip is None:
            return None
        return "prior" if isinstance(self.model, PriorConfig) else "decoder"

    @property
    def captioned(self) -> bool:
        """Whether training draws a caption for each image: text-conditioned networks, a CLIP, a diffusion prior."""
        return self.cond == "text" or self.model_kind == "prior"

    @property
    def sampler_defaults(self) -> dict[str, Any]:
        """Sampler options that differ from the samplers' defaults: a latent run's predicted x_0 is a latent, and a
        prior's a scaled CLIP embedding, not pixels in [-1, 1], so they are not clipped (threshold "none")."""
        return {"threshold": "none"} if self.latent is not None or self.model_kind == "prior" else {}

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample: (C, H, W) for images (and for latents: what the U-Net is built for),
        (dim,) for 2D toys."""
        m = self.model
        return (m.dim,) if isinstance(m, (MLPConfig, PriorConfig)) else (m.in_channels, m.image_size, m.image_size)

    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-able dict (what config.json and checkpoints store)."""
        d = {
            "preset": self.preset,
            "data": dataclasses.asdict(self.data),
            "model": {"kind": self.model_kind, **self.model.to_dict()},
            "diffusion": dataclasses.asdict(self.diffusion),
            "train": dataclasses.asdict(self.train),
        }
        if self.latent is not None:
            d["latent"] = dataclasses.asdict(self.latent)
        if self.super_res is not None:
            d["super_res"] = dataclasses.asdict(self.super_res)
        if self.unclip is not None:
            d["unclip"] = dataclasses.asdict(self.unclip)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        model = dict(d["model"])
        kind = check_mode(model.pop("kind", "unet"), tuple(MODEL_KINDS), "model kind")
        return cls(
            preset=d["preset"],
            data=dataclass_from_dict(DataConfig, d["data"]),
            model=MODEL_KINDS[kind].from_dict(model),
            diffusion=dataclass_from_dict(DiffusionConfig, d["diffusion"]),
            train=dataclass_from_dict(TrainConfig, _migrate_train(d["train"])),
            latent=dataclass_from_dict(LatentConfig, d["latent"]) if d.get("latent") is not None else None,
            super_res=(dataclass_from_dict(SuperResConfig, d["super_res"]) if d.get("super_res") is not None
                       else None),
            unclip=dataclass_from_dict(UnclipConfig, d["unclip"]) if d.get("unclip") is not None else None,
        )

    def replace(self, **overrides: Any) -> Config:
        """A copy with fields replaced; keys may name a section (data=..., model=...) or any field of
        TrainConfig, DataConfig, DiffusionConfig or the model config (e.g. steps=500, cond="text")."""
        sections = {"data": self.data, "model": self.model, "diffusion": self.diffusion, "train": self.train}
        for name in ("latent", "super_res", "unclip"):
            if getattr(self, name) is not None:
                sections[name] = getattr(self, name)
        top = {}
        overrides = dict(overrides)
        if "cond" in overrides and isinstance(self.model, UNetConfig):
            data = overrides.get("data", self.data)
            sections["model"] = with_conditioning(self.model, overrides.pop("cond"), data.dataset)
        for key, value in overrides.items():
            if key in ("preset", "latent", "super_res", "unclip", *sections):  # a stage may be added or removed
                top[key] = value
                continue
            owners = [name for name, obj in sections.items() if key in {f.name for f in dataclasses.fields(obj)}]
            if not owners:
                known = sorted({f.name for obj in sections.values() for f in dataclasses.fields(obj)})
                raise ValueError(f"unknown config field {key!r}; known fields: {', '.join(known)}")
            name = owners[0]
            sections[name] = dataclasses.replace(sections[name], **{key: value})
        sections.update({k: v for k, v in top.items() if k != "preset"})
        return Config(preset=top.get("preset", self.preset), **{"latent": None, "super_res": None, "unclip": None,
                                                                        **sections})


# Settings that --resume may change: they do not alter the path of the optimization that is already done
# (steps stretches a cosine schedule from here on; the rest is bookkeeping). Any other change is refused.
RESUMABLE_CHANGES = ("steps", "log_every", "ckpt_every", "sample_every", "sample_steps", "guidance", "compile",
                     "precision")


def resume_changes(saved: Config, requested: Config) -> list[str]:
    """What ``requested`` changes in a run saved with ``saved``, as "name: old -> new" lines. Raises a
    ValueError naming every change that would make the resumed run a different training."""
    if (saved.model != requested.model or saved.diffusion != requested.diffusion or saved.data != requested.data
            or saved.latent != requested.latent or saved.super_res != requested.super_res
            or saved.unclip != requested.unclip):
        raise ValueError(f"this run was trained with preset {saved.preset!r} and a different network, diffusion "
                         f"or data; resume it with the same settings, or start a new --name")
    old, new = saved.to_dict()["train"], requested.to_dict()["train"]
    changed = {k: (old[k], new[k]) for k in old if old[k] != new.get(k)}
    refused = [k for k in changed if k not in RESUMABLE_CHANGES]
    if refused:
        shown = ", ".join(f"{k} ({changed[k][0]} -> {changed[k][1]})" for k in refused)
        raise ValueError(f"--resume cannot change {shown}: the resumed run would not continue the same "
                         f"training; resume without these flags, or start a new --name")
    return [f"{k}: {a} -> {b}" for k, (a, b) in changed.items()]


def _migrate_train(d: dict[str, Any]) -> dict[str, Any]:
    """Configs saved before ``precision`` had ``amp`` (True: bf16 autocast on CUDA): True -> "auto", False -> "fp32"."""
    d = dict(d)
    if "amp" in d and "precision" not in d:
        d["precision"] = "auto" if d.pop("amp") else "fp32"
    return d


def with_conditioning(model: UNetConfig, cond: str, dataset: str) -> UNetConfig:
    """The U-Net config with its conditioning switched: "none", "class" (one entry per class of the dataset)
    or "text" (vocabulary and prompt length from the dataset's caption grammar, cross-attention at the lowest
    resolution)."""
    check_mode(cond, ("none", "class", "text"), "cond")
    if cond == "none":
        return dataclasses.replace(model, cond="none", vocab=(), cross_attn_resolutions=())
    if dataset == "toy2d":
        raise ValueError("the 2D toy data sets have no labels: use cond='none'")
    if cond == "class":
        return dataclasses.replace(model, cond="class", num_classes=len(dataset_label_names(dataset)), vocab=(),
                                   cross_attn_resolutions=())
    return dataclasses.replace(model, cond="text", vocab=caption_vocabulary(dataset),
                               max_prompt_len=max(model.max_prompt_len, caption_max_words(dataset)),
                               cross_attn_resolutions=(model.resolutions[-1],))
