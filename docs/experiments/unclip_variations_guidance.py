"""unCLIP's variations at several decoder guidance scales (docs/results.md, "unCLIP"): 100 test digits x 8, the
share that keep the digit, their diversity and distance to the source, as ``evaluate`` measures them.

    python docs/experiments/unclip_variations_guidance.py 1,1.25,1.5
"""

import sys
import time

import torch

from ddpm.checkpoints import load_run
from ddpm.datasets import load_dataset
from ddpm.metrics.judge import SampleJudge
from ddpm.pipelines.unclip.evaluate import evaluate_variations
from ddpm.pipelines.unclip.stage import Unclip

if __name__ == "__main__":
    torch.set_num_threads(2)
    test = load_dataset("mnist", "test")
    prior, decoder = load_run("runs/mnist-prior"), load_run("runs/mnist-decoder")
    judge = SampleJudge("mnist", test, None, None, 800, 0, False)
    for guidance in (float(g) for g in sys.argv[1].split(",")):
        t0 = time.time()
        r = evaluate_variations(Unclip(prior, decoder, variations_guidance=guidance), test, judge=judge)
        print(f"guidance {guidance}: keep {r['keep_class']:.4f}, diversity {r['diversity']:.2f}, distance to the "
              f"source {r['distance_to_source']:.2f} ({time.time() - t0:.0f} s)", flush=True)
