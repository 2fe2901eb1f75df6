"""Does torch's fused attention pay on a CPU (docs/cpu.md, "Against diffusers")? The mnist U-Net (class) and the
mnist-text U-Net, a sampling forward of 64 images in fp32, with ddpm.nn.conditioning.attention (the equation
written out with einsum) against F.scaled_dot_product_attention (the same function), timed round-robin.

    python docs/experiments/sdpa_attention.py
"""

import torch
import torch.nn.functional as F

import ddpm.nn.conditioning as conditioning
import ddpm.nn.layers as layers
from ddpm.bench.measure import interleaved, summary
from ddpm.nn.unet import UNet
from ddpm.presets import get_preset

EQUATION = conditioning.attention


def fused(q, k, v, key_mask=None):
    mask = None if key_mask is None else key_mask.reshape(key_mask.shape[0], *([1] * (q.ndim - 2)),
                                                          key_mask.shape[1])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def main() -> None:
    torch.manual_seed(0)
    for preset in ("mnist", "mnist-text"):
        model = UNet(get_preset(preset).model).eval()
        for p in model.parameters():  # away from the zero init, so every path counts
            p.data.add_(0.02 * torch.randn_like(p))
        x, t = torch.randn(64, 1, 28, 28), torch.randint(0, 1000, (64,))
        cond = torch.randint(0, 10, (64,)) if preset == "mnist" else ["a thick seven"] * 64

        def forward(fn, model=model, x=x, t=t, cond=cond):
            def run():
                layers.attention = fn  # the name the U-Net's attention blocks call
                try:
                    with torch.no_grad():
                        return model(x, t, cond)
                finally:
                    layers.attention = EQUATION
            return run

        diff = (forward(EQUATION)() - forward(fused)()).abs().max().item()
        times = {k: summary(v)["median_s"] for k, v in
                 interleaved({"einsum": forward(EQUATION), "sdpa": forward(fused)}, torch.device("cpu"), 5).items()}
        print(f"{preset}: max |difference| {diff:.1e}; einsum {times['einsum'] * 1e3:.1f} ms, sdpa "
              f"{times['sdpa'] * 1e3:.1f} ms: sdpa {times['einsum'] / times['sdpa']:.2f}x")


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
