"""What every sampler shares: the Step it yields, and the plumbing around its loop (SamplerOptions).

A sampler's own file holds its loop, k-diffusion style: for i = S-1..0 one network call, its update on the page,
one Step yielded. Everything else (respacing, guidance, precision, x_T, noise, the progress bar, thresholding)
is SamplerOptions, the keyword arguments every sampler takes besides its own, documented here once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ddpm._util import check_mode
from ddpm.diffusion import GaussianDiffusion
from ddpm.samplers.guidance import PRECISIONS, check_guidance, guided, in_precision
from ddpm.samplers.known import Known
from ddpm.samplers.respacing import SPACINGS, Spacing, respace, space_timesteps
from ddpm.samplers.thresholding import DEFAULT_PERCENTILE, THRESHOLDS, Threshold, denoise

__all__ = ["Step", "SamplerOptions", "last"]

# keywords that samplers no longer take, and what to pass instead (named in the TypeError)
_REMOVED = {"clip_denoised": "threshold='clip' | 'none' (or 'dynamic')"}


class Step(NamedTuple):
    """One step of a reverse trajectory, from x_t to the next state x_prev.

    t: the timestep index of x_t in the *original* process, 0..T-1 (the paper's t is t + 1), also for a
       respaced sampler; -1 marks the finished sample x_0 (the paper's t = 0; see ``final``).
    x_t: the state the step starts from [B, ...].
    pred_x0: the network's prediction of x_0 from x_t (Eq. 4 solved for x_0; thresholded as the sampler
       thresholds, see ddpm.samplers.thresholding).
    x_prev: the state the step produces: x at the next kept timestep, or x_0 after the last step.
    """

    t: int
    x_t: Tensor
    pred_x0: Tensor
    x_prev: Tensor

    @staticmethod
    def final(x0: Tensor) -> Step:
        """The finished sample as a Step of its own (t = -1), for trajectories that show x_0 last."""
        return Step(-1, x0, x0, x0)


@dataclass(frozen=True)
class SamplerOptions:
    """The keyword arguments every sampler takes besides its own (``**options`` in each signature):

        spacing           which ``steps`` timesteps a sampler with steps < T visits: "uniform" (default) | "lambda"
                          | "karras" (ddpm.samplers.respacing); the process is respaced to them
        guidance_scale    classifier-free guidance at scale s (ddpm.samplers.guidance); None or 1: the plain model
        batched_guidance  guidance's two network calls as one call on the stacked batch [x_t; x_t], [cond; null]
        precision         the network's arithmetic: "fp32" (default) | "bf16" | "auto"; the sampler's stays in dtype
        threshold         what happens to pred_x0 outside [-1, 1]: "clip" (default; None means it) | "dynamic" |
                          "none" (ddpm.samplers.thresholding)
        percentile        the percentile p of "dynamic" thresholding (0.995)
        x_T               where the reverse process starts [B, ...]; default: N(0, I) drawn from ``generator``
        generator         a torch.Generator on ``device`` for every draw (x_T, then each step's z): the same seed
                          gives the same images
        device            where x_T lives (default: the diffusion's device)
        dtype             of x_T and the sampler's arithmetic (default float32)
        progress          a tqdm bar over the steps
        t_start           x_T is the state at this timestep index of ``diffusion`` (SDEdit: x ~ q(x_t0 | x_0)),
                          not at T - 1: the sampler's ``steps`` are spaced over t_start..0 (needs x_T)
        t_stop            end at the state of this index instead of x_0 (a segment of a run, as RePaint's
                          resampling takes them); ``steps`` then counts the steps from t_start down to it
        known             a known region (ddpm.samplers.known.Known): after every step it replaces those pixels
                          with the forward process of its image at the step's noise level (inpainting)

    A sampler builds them with ``SamplerOptions.of(name, options)``, which raises TypeError for an unknown keyword.
    """

    spacing: Spacing = "uniform"
    guidance_scale: float | None = None
    batched_guidance: bool = False
    precision: str = "fp32"
    threshold: Threshold | None = "clip"
    percentile: float = DEFAULT_PERCENTILE
    x_T: Tensor | None = None
    generator: torch.Generator | None = None
    device: Any = None
    dtype: torch.dtype = torch.float32
    progress: bool = False
    t_start: int | None = None
    t_stop: int | None = None
    known: Known | None = None

    def __post_init__(self):
        if self.threshold is None:
            object.__setattr__(self, "threshold", "clip")
        check_mode(self.threshold, THRESHOLDS, "threshold")
        check_mode(self.spacing, SPACINGS, "spacing")
        check_mode(self.precision, PRECISIONS, "precision")
        check_guidance(self.guidance_scale)
        for name in ("t_start", "t_stop"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(f"{name} must be a timestep index >= 0, got {value!r}")
        if self.t_start is not None and self.x_T is None:
            raise ValueError("t_start needs x_T, the state at that timestep (SDEdit: the image noised by q(x_t | x_0))")
        if self.t_stop is not None and self.t_stop >= (self.t_start if self.t_start is not None else 2**62):
            raise ValueError(f"t_stop ({self.t_stop}) must lie below t_start ({self.t_start})")

    @classmethod
    def of(cls, sampler: str, options: Mapping[str, Any]) -> SamplerOptions:
        """The options of a call to ``sampler``; a keyword that is neither the sampler's nor one of these raises
        TypeError, as Python's own would."""
        known = {f.name for f in fields(cls)}
        for name in options:
            if name not in known:
                hint = f"; use {_REMOVED[name]}" if name in _REMOVED else ""
                raise TypeError(f"{sampler}() got an unexpected keyword argument {name!r}{hint}")
        return cls(**options)

    def start(self, model: Callable, diffusion: GaussianDiffusion, shape: Sequence[int],
              steps: int | None) -> tuple[GaussianDiffusion, Callable, Tensor]:
        """(process, model, x_T): the diffusion respaced to ``steps`` (the full process for None or T) between
        t_start and t_stop; the model with guidance, in its precision; x_T as given or N(0, I) on the device."""
        process = self._process(diffusion, steps)
        model = guided(in_precision(model, self.precision), self.guidance_scale, batched=self.batched_guidance,
                       learned_variance=diffusion.learned_variance)
        device = self.device if self.device is not None else diffusion.betas.device
        if self.x_T is not None:
            return process, model, self.x_T.to(device, self.dtype)
        return process, model, torch.randn(tuple(shape), device=device, dtype=self.dtype, generator=self.generator)

    def _process(self, diffusion: GaussianDiffusion, steps: int | None) -> GaussianDiffusion:
        """The process a sampler runs: its timesteps from t_start (default T - 1) down to t_stop (default: to x_0),
        all of them for steps None, else ``steps`` of them spaced by ``spacing`` (one more with t_stop: the
        state it ends at)."""
        if self.t_start is None and self.t_stop is None:
            return diffusion if steps is None or steps == diffusion.T else respace(diffusion, steps, self.spacing)
        top = diffusion.T - 1 if self.t_start is None else self.t_start
        bottom = 0 if self.t_stop is None else self.t_stop
        if top >= diffusion.T:
            raise ValueError(f"t_start must lie in 0..{diffusion.T - 1}, got {top}")
        span = top - bottom + 1  # timesteps from t_start down to t_stop (or 0)
        count = span if steps is None else steps + (self.t_stop is not None)
        if not 1 <= count <= span:
            raise ValueError(f"{steps} steps do not fit between timesteps {top} and {bottom}: give at most "
                             f"{span - (self.t_stop is not None)}")
        use = [bottom + k for k in space_timesteps(span, count, self.spacing, diffusion.alpha_bar[bottom:top + 1])]
        return respace(diffusion, use)

    def countdown(self, process: GaussianDiffusion, x: Tensor, desc: str) -> Iterator[tuple[int, Tensor]]:
        """(i, t) for i = S-1, ..., 0 (..., 1 with t_stop: its last state is index 0), the steps of the (respaced)
        process: t is i as an int64 tensor [B]."""
        last_i = 1 if self.t_stop is not None else 0
        indices = range(process.T - 1, last_i - 1, -1)
        for i in tqdm(indices, desc=desc, total=len(indices), leave=False) if self.progress else indices:
            yield i, torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)

    def denoise(self, process: GaussianDiffusion, output: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(pred_x0, pred_eps) from the network output, pred_x0 thresholded (ddpm.samplers.thresholding.denoise)."""
        return denoise(process, output, x_t, t, self.threshold, self.percentile)

    def keep_known(self, process: GaussianDiffusion, x_prev: Tensor, i: int) -> Tensor:
        """x_prev with the known region (if any) put back at its noise level (ddpm.samplers.known, Eq. 8)."""
        return x_prev if self.known is None else self.known.merge(process, x_prev, i, self.noise(x_prev))

    def noise(self, x: Tensor) -> Tensor:
        """z ~ N(0, I) like x, from the generator."""
        return torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=self.generator)


def last(steps: Iterator[Step]) -> Tensor:
    """Run a sampler's steps to the end and return x_0 (the last step's x_prev)."""
    (final,) = deque(steps, maxlen=1)  # keeps only the final step
    return final.x_prev
