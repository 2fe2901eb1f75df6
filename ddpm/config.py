"""Configuration: one frozen dataclass per component, and a Config that holds them (the named presets are in
ddpm.presets). A pipeline's own section (a latent run's autoencoder, a cascade's super-resolution settings, an
unCLIP stage's CLIP) is defined in its folder and kept in ``Config.stage``; ``Config.kind`` names the Kind
(ddpm.pipelines.base) that knows what to do with it.

    from ddpm.presets import get_preset
    config = get_preset("mnist", steps=500)          # top-level TrainConfig fields as overrides
    config.to_dict() / Config.from_dict(d)           # plain dicts for config.json and checkpoints

No globals are mutated and nothing is read from the environment: a run is fully described by its Config.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from ddpm._util import check_mode, dataclass_from_dict
from ddpm.datasets import caption_max_words, caption_vocabulary, dataset_label_names
from ddpm.diffusion import PREDICTIONS
from ddpm.improved import LOSSES, TIMESTEP_SAMPLERS
from ddpm.improved.importance import TimestepSampling
from ddpm.improved.losses import Loss
from ddpm.nn.unet import UNetConfig
from ddpm.samplers import check_guidance
from ddpm.schedules import SCHEDULES

DatasetName = Literal["mnist", "fashion-mnist", "cifar10", "toy2d"]
Optimizer = Literal["adam", "adamw"]
LRSchedule = Literal["constant", "cosine"]
TrainPrecision = Literal["fp32", "bf16", "auto"]

__all__ = ["DataConfig", "DiffusionConfig", "TrainConfig", "Config", "resume_changes", "RESUMABLE_CHANGES",
           "with_conditioning", "kind_names", "MNIST_TRAIN"]


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
    # Improved DDPM (ddpm.improved): "simple" (Ho et al.'s L_simple), "hybrid" (+ 0.001 L_vlb, needs the U-Net's
    # learn_sigma) or "vlb" (the bound itself); t drawn "uniform" or by "importance" (Sec. 3.3, for L_vlb)
    loss: Loss = "simple"
    timesteps: TimestepSampling = "uniform"

    def __post_init__(self) -> None:
        check_mode(self.schedule, tuple(SCHEDULES), "schedule")
        check_mode(self.prediction, PREDICTIONS, "prediction")
        check_mode(self.loss, LOSSES, "loss")
        check_mode(self.timesteps, TIMESTEP_SAMPLERS, "timesteps")
        if self.min_snr_gamma is not None and not (isinstance(self.min_snr_gamma, int | float)
                                                   and 0 < self.min_snr_gamma < float("inf")):
            raise ValueError(f"min_snr_gamma must be a positive number (5 is Hang et al.'s) or None (no weighting), "
                             f"got {self.min_snr_gamma!r}")
        if self.min_snr_gamma is not None and self.loss != "simple":
            raise ValueError(f"min_snr_gamma weights L_simple; the {self.loss!r} loss has its own weights: drop one")


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
        check_guidance(self.guidance, "train.guidance (the grids' guidance scale)")


# A short CPU run: high learning rate with a short warmup and cosine decay, a fast-settling EMA, and a step count
# that fits about 10 minutes on a 2-core laptop CPU (docs/cpu.md); the mnist preset's, and the systems' presets'
MNIST_TRAIN = dict(steps=900, batch_size=128, lr=2e-3, optimizer="adamw", warmup=100, lr_schedule="cosine",
                   ema_decay=0.995, log_every=25, sample_every=0, ckpt_every=100, sample_steps=50, guidance=2.0)

def kind(name: str):
    """The Kind of a run (ddpm.pipelines.base): the registry sits above the core and is looked up at run time."""
    return importlib.import_module("ddpm.pipelines.base").kind(name)


@dataclass(frozen=True)
class Config:
    """Everything that defines a run: data, network, diffusion and training; its kind ("ddpm": the paper's, or a
    stage of a system in ddpm/pipelines/) and that kind's own section (``stage``: e.g. a latent run's autoencoder).

    The network is a UNetConfig or MLPConfig, or the config of a pipeline's own network (its Kind.networks)."""

    preset: str
    data: DataConfig = field(default_factory=DataConfig)
    model: Any = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    kind: str = "ddpm"
    stage: Any = None

    def __post_init__(self) -> None:
        _ = self.network  # raises for a network the kind is not built of
        if self.diffusion.loss == "hybrid" and not getattr(self.model, "learn_sigma", False):
            raise ValueError("the hybrid loss trains a learned variance: give the U-Net learn_sigma=True (as the "
                             "preset mnist-hybrid does), or use loss 'simple' or 'vlb'")
        self.hook.check(self)

    @property
    def hook(self):
        """The Kind (ddpm.pipelines.base) that says what this run does differently from the plain DDPM."""
        return kind(self.kind)

    @property
    def network(self) -> str:
        """The network's name, one of the kind's (Kind.networks: "unet", "mlp", or a pipeline's "autoencoder",
        "clip", "prior")."""
        found = [k for k, (cls, _) in self.hook.networks.items() if type(self.model) is cls]
        if not found:
            raise ValueError(f"a {self.kind!r} run is built of a {' or '.join(self.hook.networks)} network, got a "
                             f"{type(self.model).__name__}")
        return found[0]

    @property
    def cond(self) -> str:
        """The network's conditioning: "none", "class", "text" or "embedding" ("none" for a network that takes
        no condition)."""
        return getattr(self.model, "cond", "none")

    @property
    def sampler_defaults(self) -> dict[str, Any]:
        """Sampler options that differ from the samplers' defaults (the Kind's: e.g. no clipping of latents)."""
        return self.hook.sampler_defaults(self)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample: (C, H, W) for images (and for latents: what the U-Net is built for),
        (dim,) for a vector (a 2D toy's point, a prior's embedding)."""
        return self.model.sample_shape

    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-able dict (what config.json and checkpoints store)."""
        d = {
            "preset": self.preset,
            "kind": self.kind,
            "data": dataclasses.asdict(self.data),
            "model": {"kind": self.network, **self.model.to_dict()},
            "diffusion": dataclasses.asdict(self.diffusion),
            "train": dataclasses.asdict(self.train),
        }
        if self.stage is not None:
            d["stage"] = dataclasses.asdict(self.stage)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """The Config of a to_dict dict (older files' dicts are migrated by ddpm.checkpoints when they load)."""
        hook = kind(check_mode(d.get("kind", "ddpm"), kind_names(), "kind"))
        model = dict(d["model"])
        network = check_mode(model.pop("kind", "unet"), tuple(hook.networks), f"{hook.name} network")
        section = hook.section
        return cls(
            preset=d["preset"],
            data=dataclass_from_dict(DataConfig, d["data"]),
            model=hook.networks[network][0].from_dict(model),
            diffusion=dataclass_from_dict(DiffusionConfig, d["diffusion"]),
            train=dataclass_from_dict(TrainConfig, d["train"]),
            kind=hook.name,
            stage=dataclass_from_dict(section, d["stage"]) if section is not None and d.get("stage") is not None
            else None,
        )

    def replace(self, **overrides: Any) -> Config:
        """A copy with fields replaced; keys may name a section (data=..., model=..., stage=...) or a field of
        exactly one of TrainConfig, DataConfig, DiffusionConfig, the model config or the stage section (e.g.
        steps=500, cond="text"); a field that two sections have (image_size) must be given through its section."""
        sections = {"data": self.data, "model": self.model, "diffusion": self.diffusion, "train": self.train}
        if self.stage is not None:
            sections["stage"] = self.stage
        top = {}
        overrides = dict(overrides)
        if "cond" in overrides and isinstance(self.model, UNetConfig):
            data = overrides.get("data", self.data)
            sections["model"] = with_conditioning(self.model, overrides.pop("cond"), data.dataset)
        for key, value in overrides.items():
            if key in ("preset", "kind", "stage", *sections):
                top[key] = value
                continue
            owners = [name for name, obj in sections.items() if key in {f.name for f in dataclasses.fields(obj)}]
            if not owners:
                known = sorted({f.name for obj in sections.values() for f in dataclasses.fields(obj)})
                raise ValueError(f"unknown config field {key!r}; known fields: {', '.join(known)}")
            if len(owners) > 1:
                raise ValueError(f"{key!r} is a field of both {' and '.join(owners)}: replace it through its section, "
                                 f"e.g. {owners[0]}=dataclasses.replace(config.{owners[0]}, {key}=...)")
            sections[owners[0]] = dataclasses.replace(sections[owners[0]], **{key: value})
        sections.update({k: v for k, v in top.items() if k not in ("preset", "kind")})
        return Config(preset=top.get("preset", self.preset), kind=top.get("kind", self.kind),
                      **{"stage": None, **sections})


def kind_names() -> tuple[str, ...]:
    return importlib.import_module("ddpm.pipelines.base").kind_names()


# Settings that --resume may change: they do not alter the path of the optimization that is already done
# (steps stretches a cosine schedule from here on; the rest is bookkeeping). Any other change is refused.
RESUMABLE_CHANGES = ("steps", "log_every", "ckpt_every", "sample_every", "sample_steps", "guidance", "compile",
                     "precision")


def resume_changes(saved: Config, requested: Config) -> list[str]:
    """What ``requested`` changes in a run saved with ``saved``, as "name: old -> new" lines. Raises a
    ValueError naming every change that would make the resumed run a different training."""
    if (saved.model != requested.model or saved.diffusion != requested.diffusion or saved.data != requested.data
            or saved.kind != requested.kind or saved.stage != requested.stage):
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
