"""Which sampler leaves clean backgrounds (docs/results.md, "Speckle"): 1000 class-balanced samples of a run at each
(sampler, steps, guidance, options), judged like `evaluate` (accuracy, Frechet distance against the floor at the
same n) with the share of speckled samples (ddpm.metrics.judge.speckled). Batches of 250, bf16 where fast.

    python docs/experiments/sampler_speckle.py data/pretrained/mnist.pt \
        '[("dpmpp-2m", 15, None, {}), ("dpmpp-2m-sde", 25, 1.5, {})]'
    SEED=1 python docs/experiments/sampler_speckle.py ...

guidance None is the run's own (train.guidance).
"""

import ast
import os
import sys
import time

import torch

from ddpm.checkpoints import load_run
from ddpm.datasets import load_dataset
from ddpm.metrics.evaluate import generate_samples
from ddpm.metrics.judge import SampleJudge, speckled_share


def main(run: str, configs, n: int = 1000, seed: int = 0) -> None:
    loaded = load_run(run)
    test = load_dataset(loaded.config.data.dataset, "test")
    judge = SampleJudge(loaded.config.data.dataset, test, None, None, n, 0, False)
    print(f"{run}: floor {judge.floor:.2f} (n = {n}); real test images speckled {speckled_share(test.images):.4f}")
    for sampler, steps, guidance, options in configs:
        guidance = guidance if guidance is not None else loaded.config.train.guidance
        t0 = time.time()
        images, labels, _ = generate_samples(loaded, n, sampler=sampler, steps=steps, guidance=guidance, seed=seed,
                                             batch_size=250, options={"precision": "auto", **options})
        r = judge(images, labels)
        print(f"{sampler} {steps} steps {options} guidance {guidance}, seed {seed}: accuracy {r['accuracy']:.4f}, "
              f"Frechet {r['frechet']:.2f} ({r['frechet_ratio']:.2f}x), speckled {speckled_share(images):.4f} "
              f"({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(2)
    main(sys.argv[1], ast.literal_eval(sys.argv[2]), seed=int(os.environ.get("SEED", 0)))
