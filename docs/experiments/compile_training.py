"""Does torch.compile pay for training on a CPU (docs/cpu.md, "Against diffusers")? The mnist U-Net, a bf16
autocast training step (forward, MSE, backward) at batch 128, eager against torch.compile's, timed round-robin
after the compiled one's first call (whose wall time, the compilation, is printed apart).

    python docs/experiments/compile_training.py
"""

import time

import torch

from ddpm.bench.measure import interleaved, summary
from ddpm.nn.unet import UNet
from ddpm.presets import get_preset


def main() -> None:
    torch.manual_seed(0)
    model = UNet(get_preset("mnist").model)
    x, t, c = torch.randn(128, 1, 28, 28), torch.randint(0, 1000, (128,)), torch.randint(0, 10, (128,))
    target = torch.randn_like(x)
    compiled = torch.compile(model)

    def step(net):
        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = (net(x, t, c).float() - target).square().mean()
            loss.backward()
        return run

    t0 = time.time()
    step(compiled)()
    print(f"compilation and the first step: {time.time() - t0:.1f} s", flush=True)
    times = {k: summary(v)["median_s"] for k, v in
             interleaved({"eager": step(model), "compiled": step(compiled)}, torch.device("cpu"), 4).items()}
    print(f"bf16 training step: eager {times['eager'] * 1e3:.0f} ms, compiled {times['compiled'] * 1e3:.0f} ms: "
          f"compiled {times['eager'] / times['compiled']:.2f}x")


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
