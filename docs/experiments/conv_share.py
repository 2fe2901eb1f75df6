"""How fast could this project's U-Net be against diffusers' on the same network (docs/cpu.md, "Against diffusers")?
Both call the same oneDNN convolutions at the same shapes, so ddpm's step takes at least diffusers' convolution
time, and ddpm / diffusers can be at most 1 / (the convolutions' share of diffusers' time), even if everything else
cost nothing. This profiles (torch.profiler, self CPU time) a training step (forward, MSE, backward; batch 128) and a
sampling forward (batch 64) of the two, in fp32, alternating, and prints each one's convolution share and the bound.

    python docs/experiments/conv_share.py [ROUNDS]
"""

import sys

import torch
from torch.profiler import ProfilerActivity, profile

from ddpm.bench.versus import same_network

CONV = "conv"  # in every convolution operator's name: aten::convolution, aten::mkldnn_convolution, the backward


def _step(net, x, t, train: bool) -> None:
    if train:
        out = net(x, t)
        out = getattr(out, "sample", out)
        (out - x).pow(2).mean().backward()
    else:
        with torch.no_grad():
            net(x, t)


def main(rounds: int = 4) -> None:
    torch.set_num_threads(2)
    ours, theirs = same_network("mnist")
    torch.manual_seed(0)
    nets = {"ddpm": ours, "diffusers": theirs}
    for name, batch, train in (("training step", 128, True), ("sampling forward", 64, False)):
        x, t = torch.randn(batch, 1, 28, 28), torch.randint(0, 1000, (batch,))
        conv, total = dict.fromkeys(nets, 0.0), dict.fromkeys(nets, 0.0)
        for net in nets.values():  # untimed warm-up
            _step(net.train(train), x, t, train)
        for _ in range(rounds):
            for lib, net in nets.items():
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    _step(net, x, t, train)
                for e in prof.key_averages():
                    total[lib] += e.self_cpu_time_total
                    if CONV in e.key:
                        conv[lib] += e.self_cpu_time_total
        for lib in nets:
            print(f"{name}, {lib}: {total[lib] / rounds / 1e3:7.1f} ms profiled, convolutions "
                  f"{100 * conv[lib] / total[lib]:.1f}%")
        print(f"{name}: ddpm / diffusers at most {total['diffusers'] / conv['diffusers']:.2f}x (diffusers' time over "
              f"its convolutions')")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
