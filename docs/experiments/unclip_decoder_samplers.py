"""unCLIP's decoder: which sampler and guidance (docs/results.md, "unCLIP"). 500 class-prompt samples through the
prior (its defaults) and the decoder at each setting; digit accuracy, Frechet distance (floor for 500 images) and
speckle: the share of pixels brighter than 10% gray farther than 2 pixels from every stroke pixel (> 0.3).

    python docs/experiments/unclip_decoder_samplers.py '[("ddim", 50, 1.0, {"eta": 1.0}), ("dpmpp-2m", 15, 1.5, {})]'
"""

import ast
import sys
import time

import torch

from ddpm.checkpoints import load_run
from ddpm.conditions import balanced_labels
from ddpm.datasets import MNIST_LABEL_NAMES, class_prompts, load_dataset
from ddpm.metrics.judge import SampleJudge, stray_pixels
from ddpm.pipelines.unclip.evaluate import generate
from ddpm.pipelines.unclip.stage import DECODER_SAMPLING, Unclip


def speckle(images: torch.Tensor) -> float:
    """The share of pixels that are stray (ddpm.metrics.judge.stray_pixels); evaluate reports the share of images
    with 3 or more, ddpm.metrics.judge.speckled."""
    return float(stray_pixels(images).sum() / images[0].numel() / len(images))


def main(configs, n: int = 500) -> None:
    test = load_dataset("mnist", "test")
    prior, decoder = load_run("runs/mnist-prior"), load_run("runs/mnist-decoder")
    judge = SampleJudge("mnist", test, None, None, n, 0, False)
    labels = balanced_labels(n, 10)
    prompts = class_prompts(MNIST_LABEL_NAMES, labels, "mnist")
    print(f"real test digits: speckle {speckle(test.images[:n]):.4f}, Frechet floor {judge.floor:.2f}", flush=True)
    for sampler, steps, guidance, options in configs:
        t0 = time.time()
        sampling = DECODER_SAMPLING.override(sampler, steps, guidance, options)
        images = generate(Unclip(prior, decoder, None, sampling), prompts, 0)
        r = judge(images, labels)
        print(f"{sampler} {steps} {options} guidance {guidance}: accuracy {r['accuracy']:.3f}, Frechet "
              f"{r['frechet']:.2f} ({r['frechet_ratio']:.2f}x), speckle {speckle(images):.4f} "
              f"({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(2)
    main(ast.literal_eval(sys.argv[1]))
