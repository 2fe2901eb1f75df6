"""How much of a training step does the mnist U-Net's width cost (docs/cpu.md, "What ten minutes should train")? A
training step (forward, MSE, backward, AdamW; class-conditional, batch 128) of the mnist network at ch 32 (the
preset), 24 and 16, round-robin in one process: the median of each width's timed steps after one untimed round, and
its ratio to ch 32. On a CPU held to AVX2:

    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
        python docs/experiments/width_step_time.py [ROUNDS] [fp32|bf16]
"""

import statistics
import sys
import time

import torch

from ddpm.presets import get_preset
from ddpm.runtime import keep_freed_memory
from ddpm.training import build_model

WIDTHS = (32, 24, 16)


def main(rounds: int = 6, precision: str = "fp32") -> None:
    keep_freed_memory()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    x, t, y = torch.randn(128, 1, 28, 28), torch.randint(0, 1000, (128,)), torch.randint(0, 10, (128,))
    nets = {}
    for ch in WIDTHS:
        model = build_model(get_preset("mnist", ch=ch)).train()
        nets[ch] = (model, torch.optim.AdamW(model.parameters(), 1e-4))
    times = {ch: [] for ch in WIDTHS}
    for r in range(rounds + 1):
        for ch, (model, opt) in nets.items():
            start = time.perf_counter()
            with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
                out = model(x, t, y)
            loss = (out.float() - x).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if r:  # the first round is untimed
                times[ch].append(time.perf_counter() - start)
    base = statistics.median(times[WIDTHS[0]])
    for ch in WIDTHS:
        params = sum(p.numel() for p in nets[ch][0].parameters())
        ms = statistics.median(times[ch]) * 1000
        print(f"ch {ch:2d}: {params:9,d} parameters, {ms:6.0f} ms per {precision} step, "
              f"{base * 1000 / ms:.2f}x ch 32's pace")


if __name__ == "__main__":
    main(*(int(a) if a.isdigit() else a for a in sys.argv[1:]))
