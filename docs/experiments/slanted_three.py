"""Why the held-out "a three slanted right" over-slants and closes into other digits (docs/text.md, "Slanted-right
threes"). For the shipped text model: the real digits' slant (each class's right tercile: where it starts, its mean,
its top tenth), then samples of "a handwritten D written slanted right" for the held-out three and for seen digits,
at several guidance scales: their mean slant, the share in the digit's right tercile, and the share the evaluation
classifier reads as the digit asked for, beside the plain prompt's.

    python docs/experiments/slanted_three.py data/pretrained/mnist-text.pt 200 dpmpp-2m-sde
"""

import sys
import time

import torch

from ddpm.checkpoints import load_run
from ddpm.datasets import (
    ATTRIBUTES,
    MNIST_LABEL_NAMES,
    attribute_prompt,
    class_prompts,
    measure_digits,
    mnist_measures,
    tercile_edges,
)
from ddpm.metrics.classifier import classifier_features, load_or_train_classifier
from ddpm.metrics.evaluate import sample_conditions

SLANT = ATTRIBUTES.index("slant")
DIGITS = (3, 2, 5, 7)  # the held-out three; seen digits with a similar and a larger natural slant
GUIDANCE = (1.0, 1.5, 2.0, 3.0)


def main(run: str, n: int, sampler: str) -> None:
    measures, labels = mnist_measures("train")
    edges = tercile_edges(measures, labels, 10)
    print("real training digits: slant where the right tercile starts, its mean, the mean of the top tenth")
    for d in range(10):
        s = measures[labels == d, SLANT]
        right, top = s[s > edges[d, SLANT, 1]], s[s >= torch.quantile(s, 0.9)]
        print(f"  {d} {MNIST_LABEL_NAMES[d]:5s}: from {edges[d, SLANT, 1]:.2f}, mean {right.mean():.2f}, "
              f"top tenth {top.mean():.2f}")
    loaded = load_run(run)
    clf, _ = load_or_train_classifier(None, "mnist")
    for d in DIGITS:
        for g in GUIDANCE:
            for prompt in (attribute_prompt(d, "slant", 2), class_prompts(MNIST_LABEL_NAMES, [d], "mnist")[0]):
                t0 = time.time()
                images = sample_conditions(loaded, [prompt] * n, n, sampler=sampler, steps=None, guidance=g, seed=0,
                                           batch_size=100, options={"precision": "auto"})
                s = measure_digits(images)[:, SLANT]
                read = classifier_features(clf, images)[1].argmax(1)
                others = torch.bincount(read[read != d], minlength=10)
                top = ", ".join(f"{k} {int(others[k])}" for k in others.argsort(descending=True)[:3] if others[k])
                right = (s > edges[d, SLANT, 1]).double().mean()
                print(f"{prompt!r:45s} guidance {g}: slant {s.mean():.2f} (right tercile {right:.0%}), read as "
                      f"{d}: {(read == d).double().mean():.0%} (else {top or '-'}) ({time.time() - t0:.0f} s)",
                      flush=True)


if __name__ == "__main__":
    torch.set_num_threads(2)
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
