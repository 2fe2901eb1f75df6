r"""DDIM inversion (Song et al. 2021, Sec. 5.4; "null-text inversion", Mokady et al. 2023, Sec. 3, on why
guidance breaks it): the deterministic DDIM update run forwards, from an image x_0 to the noise x_T that DDIM
decodes back into it.

DDIM with eta = 0 is an Euler step of the probability-flow ODE; run from t to the next, larger timestep t' it is

    x_{t'} = sqrt(alpha_bar_{t'}) pred_x0(x_t, t) + sqrt(1 - alpha_bar_{t'}) eps_theta(x_t, t)

the reverse update with the eps of the step's *start* in place of that of its end (which is not known yet). The
error of that swap is what limits the reconstruction; it shrinks as the steps grow (the test on a Gaussian,
whose eps is exact, pins it). The first step starts at the data itself (alpha_bar = 1), where the network is
asked at the lowest timestep.

Decoding the inverted x_T with DDIM (eta = 0) on the same timesteps and condition reconstructs x; decoding it
with another condition edits it, keeping what the noise encodes (the handwriting, the slant). Guidance makes the
update use (1 + s) eps(x, c) - s eps(x, null), a function the ODE of no single model integrates, and the
reconstruction error grows with s (Mokady et al.): invert and decode with the same guidance, or none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from ddpm.diffusion import GaussianDiffusion
from ddpm.samplers import SamplerOptions, Step, ddim_sample, last

__all__ = ["ddim_invert_progressive", "ddim_invert", "ddim_reconstruct", "slerp"]


@torch.no_grad()
def ddim_invert_progressive(model: Callable, diffusion: GaussianDiffusion, x0: Tensor, cond=None, *, steps: int = 50,
                            **options) -> Iterator[Step]:
    """The inversion from x0 [B, C, H, W] up to x at the top timestep, on ``steps`` timesteps; yields a Step
    (t: the index reached, x_t: the state it starts from, pred_x0, x_prev: the state reached) per network call.
    ``options``: the samplers' (guidance_scale, precision, threshold: "none" keeps the update invertible)."""
    opts = SamplerOptions.of("ddim_invert", {**options, "x_T": x0})
    process, model, x = opts.start(model, diffusion, x0.shape, steps)
    for i in range(process.T):  # from the data to index 0, then 0 -> 1, ..., S-2 -> S-1
        at = max(i - 1, 0)  # the index of x (the data, for i = 0: asked at the lowest timestep)
        t = torch.full((x.shape[0],), at, device=x.device, dtype=torch.long)
        output = model(x, process.model_t(t), cond)
        pred_x0, pred_eps = opts.denoise(process, output, x, t)
        if i == 0:
            pred_x0 = x  # the data is its own x_0
        abar_next = float(process.alpha_bar[i])
        x_next = abar_next**0.5 * pred_x0 + (1 - abar_next) ** 0.5 * pred_eps
        yield Step(int(process.timestep_map[i]), x, pred_x0, x_next)
        x = x_next


def ddim_invert(model: Callable, diffusion: GaussianDiffusion, x0: Tensor, cond=None, **kwargs) -> Tensor:
    """x_T [B, C, H, W] whose DDIM decoding (eta = 0, the same steps) is about x0; see ddim_invert_progressive."""
    return last(ddim_invert_progressive(model, diffusion, x0, cond, **kwargs))


def ddim_reconstruct(model: Callable, diffusion: GaussianDiffusion, x_T: Tensor, cond=None, *, steps: int = 50,
                     **options) -> Tensor:
    """DDIM (eta = 0) from an inverted x_T on the same timesteps: the reconstruction, or with another ``cond``
    the edit."""
    return ddim_sample(model, diffusion, x_T.shape, cond, steps=steps, eta=0.0, x_T=x_T, **options)


def slerp(a: Tensor, b: Tensor, w: float) -> Tensor:
    """Spherical interpolation between two noises (each image on its own): Gaussian noise lives near a sphere,
    and a straight line between two such points passes inside it, where no noise the model was trained on lies."""
    flat_a, flat_b = a.flatten(1), b.flatten(1)
    cos = (flat_a * flat_b).sum(1) / (flat_a.norm(dim=1) * flat_b.norm(dim=1))
    omega = torch.arccos(cos.clamp(-1, 1)).view(-1, *([1] * (a.dim() - 1)))
    if bool((omega.abs() < 1e-6).all()):
        return (1 - w) * a + w * b
    return (torch.sin((1 - w) * omega) * a + torch.sin(w * omega) * b) / torch.sin(omega)
