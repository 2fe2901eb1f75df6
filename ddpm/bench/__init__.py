"""Benchmark training and sampling on this machine: images/s, model FLOP utilization, sampling time, memory.

What ``run_bench`` measures, all in one process, so the numbers are comparable with each other:

- the machine's matmul FLOP/s (float32 square matmuls, best of several; bf16 too on CUDA) and, as a
  second witness, a 3x3 convolution's FLOP/s: the best of the two is the practical ceiling of this
  device ("peak"), the denominator of the model FLOP utilization (MFU). On some CPUs torch's float32
  matmul (MKL) leaves the widest vector units idle while oneDNN's convolutions use them; MFU against
  matmul alone could then exceed 100%, so both ratios are reported;
- the network's FLOPs per image (``torch.utils.flop_counter.FlopCounterMode``: matmuls and convolutions),
  forward and forward + backward (about 3x the forward);
- training images/s of a real ``Trainer.train_step`` (forward, backward, clipping, AdamW, EMA) on
  synthetic data, and MFU = training FLOP/s / peak FLOP/s;
- sampling time per step at batch 64 (ancestral and DDIM, with and without classifier-free guidance,
  which doubles the network calls), extrapolated to 64 images x T ancestral steps and x 50 DDIM steps
  (``full=True`` runs them end to end);
- peak memory (the process's max RSS on CPU, ``torch.cuda.max_memory_allocated`` on CUDA);
- with ``explore``: what some knobs do to a sampling forward pass (threads, channels_last,
  inference_mode, one batched forward for guidance, bf16 autocast); with ``profile``: where the time of
  a training step and a sampling step goes (torch.profiler, top operators).

Timings on shared machines are noisy: the load average is recorded with the results, and nothing here
asserts on absolute times.

    measure.py   one timer, FLOP/s of matmul and convolution, FLOPs of a network, memory
    runs.py      training and sampling speed, run_bench (the whole benchmark of a preset)
    knobs.py     what a few knobs do to a forward pass; torch.profiler's top operators
    report.py    format_bench: the results as a table

A system's presets are measured side by side with the pixel model they compete with by its own bench.py
(ddpm/pipelines/latent/bench.py, ddpm/pipelines/cascade/bench.py), named in its presets.py (BENCH).

The command ``python -m ddpm bench`` lives in ``ddpm.cli.bench``.
"""

from ddpm._util import num_threads
from ddpm.bench.knobs import explore_knobs, profile_steps
from ddpm.bench.measure import conv_flops, forward_flops, matmul_flops, train_flops
from ddpm.bench.report import format_bench
from ddpm.bench.runs import GOALS, bench_sampling, bench_training, run_bench

__all__ = ["num_threads", "matmul_flops", "conv_flops", "forward_flops", "train_flops", "bench_training",
           "bench_sampling", "explore_knobs", "profile_steps", "run_bench", "format_bench", "GOALS"]
