"""Does keeping freed memory (ddpm.runtime.keep_freed_memory, which every command sets) pay (docs/cpu.md)? A
training step of the mnist U-Net (class-conditional, batch 128, AdamW) in fresh processes, glibc's default malloc
against keep_freed_memory, alternated (default, kept, default, kept, ...) because the setting is process-wide: the
median step time of each process after two untimed steps, and its page faults.

    python docs/experiments/allocator.py [ROUNDS]
"""

import statistics
import subprocess
import sys

from ddpm.samplers import bf16_is_fast

STEP = """
import resource, statistics, sys, time
import torch
from ddpm.nn.unet import UNet
from ddpm.runtime import keep_freed_memory
if sys.argv[1] == "kept":
    assert keep_freed_memory()
bf16 = sys.argv[2] == "bf16"
torch.set_num_threads(2)
torch.manual_seed(0)
model = UNet.from_preset("mnist", cond="class").train()
opt = torch.optim.AdamW(model.parameters(), 1e-4)
x, t, y = torch.randn(128, 1, 28, 28), torch.randint(0, 1000, (128,)), torch.randint(0, 10, (128,))
times = []
for i in range(10):
    if i == 2:
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = (model(x, t, y).float() - x).square().mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - start)
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / 8
print(statistics.median(times[2:]), faults)
"""


def main(rounds: int) -> None:
    precisions = ["fp32"] + (["bf16"] if bf16_is_fast("cpu") else [])
    for precision in precisions:
        got = {"default": [], "kept": []}
        for _ in range(rounds):
            for mode in got:
                out = subprocess.run([sys.executable, "-c", STEP, mode, precision], capture_output=True, text=True,
                                     check=True).stdout.split()
                got[mode].append((float(out[0]), float(out[1])))
        med = {m: statistics.median(s for s, _ in v) for m, v in got.items()}
        flt = {m: statistics.median(f for _, f in v) for m, v in got.items()}
        print(f"[{precision}] step {med['default'] * 1e3:.0f} ms with glibc's defaults ({flt['default']:.0f} page "
              f"faults per step), {med['kept'] * 1e3:.0f} ms with freed memory kept ({flt['kept']:.0f}): "
              f"{med['default'] / med['kept']:.2f}x ({rounds} processes each, alternated)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
