"""Does a frozen TorchScript graph pay for sampling on a CPU (docs/cpu.md, "Against diffusers")? The mnist U-Net
made unconditional (the network bench compares with diffusers), a sampling forward of 64 images in fp32: this
project's eager module, the same module traced, frozen and optimized for inference (torch.jit.freeze, then
torch.jit.optimize_for_inference: weights folded into the graph as constants, convolutions prepacked for oneDNN),
and diffusers' UNet2DModel with the same weights, timed round-robin. fp32 only: the network in bf16 weights does
not run as it is (its time embedding stays fp32), and a trace under autocast does not freeze.

    python docs/experiments/frozen_sampling.py [THREADS]
"""

import sys

import torch

from ddpm.bench.measure import interleaved, summary
from ddpm.bench.versus import same_network


def main(threads: int) -> None:
    torch.set_num_threads(threads)
    ours, theirs = same_network("mnist")
    ours.eval()
    theirs.eval()
    x, t = torch.randn(64, 1, 28, 28), torch.randint(0, 1000, (64,))
    with torch.no_grad():
        graph = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(ours, (x, t), check_trace=False)))
        x2, t2 = torch.randn_like(x), torch.randint(0, 1000, (64,))  # not the traced input
        diff = (graph(x2, t2) - ours(x2, t2)).abs().max()
        print(f"frozen graph against the eager module: max |difference| {diff:.1e}")

    def call(f):
        def run():
            with torch.no_grad():
                f(x, t)
        return run

    fns = {"eager": call(ours), "frozen": call(graph), "diffusers": call(lambda a, b: theirs(a, b).sample)}
    times = {k: summary(v)["median_s"] for k, v in interleaved(fns, torch.device("cpu"), 7).items()}
    print(f"[fp32, {threads} threads] eager {times['eager'] * 1e3:.0f} ms, frozen {times['frozen'] * 1e3:.0f} ms, "
          f"diffusers {times['diffusers'] * 1e3:.0f} ms: frozen {times['eager'] / times['frozen']:.2f}x eager and "
          f"{times['diffusers'] / times['frozen']:.2f}x diffusers; eager {times['diffusers'] / times['eager']:.2f}x "
          f"diffusers")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
