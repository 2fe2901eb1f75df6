"""Where background speckle comes from (docs/results.md, "Speckle"): DPM-Solver++(2M) on 15 steps whose last K
steps are stochastic (the SDE step, eta = 1), optionally with guidance `tail_guidance` in the last K_g steps
instead of the run's. 1000 class-balanced samples of a shipped model, judged like `evaluate` (accuracy, Frechet
distance, the share of speckled samples).

    python docs/experiments/stochastic_tail.py data/pretrained/mnist.pt '[(2, None, 0), (0, 1.0, 4), (4, 1.0, 4)]'

Each tuple is (K, tail_guidance, K_g): K = 0 is the plain ODE solver; tail_guidance None keeps the run's.
"""

import ast
import sys
import time

import torch

import ddpm.samplers as samplers
from ddpm.checkpoints import load_run
from ddpm.datasets import load_dataset
from ddpm.metrics.evaluate import generate_samples
from ddpm.metrics.judge import SampleJudge, speckled_share
from ddpm.samplers.dpm_solver import LOWER_ORDER_FINAL_STEPS, dpmpp_update, half_log_snr
from ddpm.samplers.guidance import guided, in_precision
from ddpm.samplers.steps import SamplerOptions, Step


def tail_sampler(k: int, tail_guidance: float | None, k_g: int):
    """A 2M loop (as ddpm.samplers.dpm_solver._dpmpp) with SDE steps at the last k indices and the model guided
    by tail_guidance at the last k_g."""

    @torch.no_grad()
    def progressive(model, diffusion, shape, cond=None, *, steps=15, **options):
        opts = SamplerOptions.of("stochastic_tail", options)
        raw = model
        process, model, x = opts.start(model, diffusion, shape, steps)
        tail_model = guided(in_precision(raw, opts.precision), tail_guidance) if tail_guidance else model
        history = []
        for i, t in opts.countdown(process, x, "stochastic tail"):
            output = (tail_model if i <= k_g else model)(x, process.model_t(t), cond)
            abar = float(process.alpha_bar[i])
            pred_x0, _ = opts.denoise(process, output, x, t)
            history.append((half_log_snr(abar), pred_x0))
            del history[:-2]
            n = 1 if i == 0 else min(len(history), i) if process.T - 1 < LOWER_ORDER_FINAL_STEPS else len(history)
            noise = opts.noise(x) if 0 < i <= k else None
            x_prev = dpmpp_update(x, abar, float(process.alpha_bar_prev[i]), history[-n:], noise, 1.0)
            yield Step(int(process.timestep_map[i]), x, pred_x0, x_prev)
            x = x_prev

    return progressive


def main(run: str, configs, n: int = 1000) -> None:
    loaded = load_run(run)
    test = load_dataset(loaded.config.data.dataset, "test")
    judge = SampleJudge(loaded.config.data.dataset, test, None, None, n, 0, False)
    for k, tail_guidance, k_g in configs:
        samplers._PROGRESSIVE["dpmpp-2m-sde"] = tail_sampler(k, tail_guidance, k_g)  # the experiment's loop
        t0 = time.time()
        images, labels, _ = generate_samples(loaded, n, sampler="dpmpp-2m-sde", steps=15,
                                             guidance=loaded.config.train.guidance, seed=0, batch_size=250,
                                             options={"precision": "auto"})
        r = judge(images, labels)
        print(f"last {k} steps stochastic, guidance {tail_guidance or loaded.config.train.guidance} in the last "
              f"{k_g}: accuracy {r['accuracy']:.4f}, Frechet {r['frechet']:.2f} ({r['frechet_ratio']:.2f}x), "
              f"speckled {speckled_share(images):.4f} ({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(2)
    main(sys.argv[1], ast.literal_eval(sys.argv[2]))
