"""The editing methods on a loaded run, in the model's own space: pixels for a pixel model, latents for a latent
model (encode with its autoencoder, edit, decode; the mask on the latent grid, a cell kept only where all its
pixels are). Results are images in [-1, 1]; inpainting's are the input exactly on the kept pixels (for a latent
model the decoded image is composited with the input there, as latent inpainting pipelines do).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ddpm.checkpoints import LoadedRun
from ddpm.conditions import condition_for_labels
from ddpm.editing.inversion import ddim_invert, ddim_reconstruct, slerp
from ddpm.editing.masks import check_mask, to_grid
from ddpm.editing.repaint import repaint
from ddpm.editing.sdedit import sdedit
from ddpm.pipelines.base import Sampling
from ddpm.samplers import default_steps

__all__ = ["Editor", "INVERSION_THRESHOLD"]

INVERSION_THRESHOLD = "none"  # clipping pred_x0 is not invertible; inversion and its decoding leave it alone


@dataclass
class Editor:
    """Edits for one run: ``sampling`` is how its samplers run (the kind's default, or what the user gave)."""

    run: LoadedRun
    sampling: Sampling

    def __post_init__(self):
        run = self.run
        if len(run.shape) != 3 or len(run.image_shape) != 3 or run.cond not in ("none", "class", "text") \
                or getattr(run.config.model, "low_res_channels", 0):
            raise ValueError(f"{run.path} does not draw images from noise under a class or a prompt, so it cannot "
                             f"edit them; use a pixel or latent image model (e.g. data/pretrained/mnist.pt)")

    # ------------------------------------------------------------------ the model's space
    def encode(self, images: Tensor) -> Tensor:
        """Images in [-1, 1] as the diffusion model sees them (a latent model's latents)."""
        return self.run.config.hook.encode(self.run.frozen, images.to(self.device))

    def condition(self, labels: Tensor):
        """What this run is given to draw these classes (ddpm.conditions.condition_for_labels), on its device."""
        run = self.run
        cond = condition_for_labels(run.cond, labels, run.label_names, run.config.data.dataset)
        return cond.to(self.device) if isinstance(cond, Tensor) else cond

    @property
    def device(self):
        return self.run.diffusion.betas.device

    def _options(self, cond) -> dict:
        s = self.sampling
        guidance = s.guidance if s.guidance is not None else self.run.config.train.guidance
        return dict(sampler=s.sampler, guidance_scale=guidance if cond is not None else None,
                    **self.run.sampler_options(s.options))

    def _steps(self) -> int:
        return self.sampling.steps or default_steps(self.sampling.sampler, self.run.diffusion.T)

    # ------------------------------------------------------------------ the three methods
    @torch.no_grad()
    def sdedit(self, images: Tensor, cond, strength: float, generator: torch.Generator | None = None) -> Tensor:
        x = self.encode(images)
        out = sdedit(self.run.model, self.run.diffusion, x, cond, strength=strength, steps=self._steps(),
                     generator=generator, **self._options(cond))
        return self.run.decode(out)

    @torch.no_grad()
    def inpaint(self, images: Tensor, mask: Tensor, cond=None, *, jump: int = 10, resample: int = 10,
                steps: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        """RePaint on ``steps`` timesteps (default: the sampler's own default steps; all T for ancestral)."""
        check_mask(mask)
        images, mask = images.to(self.device), mask.to(self.device)
        x = self.encode(images)
        grid_mask = to_grid(mask, x.shape[-1])
        check_mask(grid_mask)  # a latent model: some cell must stay fully known
        options = self._options(cond)
        sampler = options.pop("sampler")
        out = repaint(self.run.model, self.run.diffusion, x, grid_mask, cond, sampler=sampler,
                      steps=steps or self._steps(), jump=jump, resample=resample, generator=generator, **options)
        return torch.where(mask.bool(), images, self.run.decode(out))

    def _inversion_options(self, cond) -> dict:
        options = self._options(cond)
        options.pop("sampler")
        options.pop("eta", None)
        options["threshold"] = INVERSION_THRESHOLD
        return options

    @torch.no_grad()
    def invert(self, images: Tensor, cond=None, steps: int | None = None) -> Tensor:
        """The DDIM noise of each image under ``cond`` (guided as the sampling says)."""
        return ddim_invert(self.run.model, self.run.diffusion, self.encode(images), cond,
                           steps=steps or self._steps(), **self._inversion_options(cond))

    @torch.no_grad()
    def reconstruct(self, x_T: Tensor, cond=None, steps: int | None = None) -> Tensor:
        """DDIM (eta = 0) from inverted noise: the input again, or under another ``cond`` the edit."""
        out = ddim_reconstruct(self.run.model, self.run.diffusion, x_T, cond, steps=steps or self._steps(),
                               **self._inversion_options(cond))
        return self.run.decode(out)

    @torch.no_grad()
    def interpolate(self, a: Tensor, b: Tensor, cond_a=None, cond_b=None, frames: int = 8,
                    steps: int | None = None) -> Tensor:
        """[frames, C, H, W]: the decodings of slerp between the inverted noises of images a and b [1, C, H, W]
        (under cond_a, cond_b; the frames are decoded under a's condition for the first half, b's after)."""
        za, zb = self.invert(a, cond_a, steps), self.invert(b, cond_b, steps)
        out = []
        for k in range(frames):
            w = k / (frames - 1)
            cond = cond_a if w < 0.5 else cond_b
            out.append(self.reconstruct(slerp(za, zb, w), cond, steps))
        return torch.cat(out)
