"""unCLIP without its prior (docs/results.md, "unCLIP"): the decoder given the CLIP *text* embedding of the prompt
directly, DALL-E 2's baseline, judged as ``evaluate --run runs/mnist-decoder`` judges the full pipeline.

    python docs/experiments/unclip_without_prior.py 1.0      # the decoder's guidance
"""

import json
import sys

import torch

from ddpm.checkpoints import load_run
from ddpm.datasets import load_dataset
from ddpm.pipelines.unclip.evaluate import evaluate_text_to_image
from ddpm.pipelines.unclip.stage import DECODER_SAMPLING, Unclip


class TextEmbeddingOnly(Unclip):
    """The pipeline with the prior replaced by the text embedding itself."""

    def prior_sample(self, prompts, generator=None):
        return self.text_embeddings(prompts)


if __name__ == "__main__":
    torch.set_num_threads(2)
    guidance = float(sys.argv[1])
    unclip = TextEmbeddingOnly(load_run("runs/mnist-prior"), load_run("runs/mnist-decoder"), None,
                               DECODER_SAMPLING.override(guidance=guidance))
    r = evaluate_text_to_image(unclip, load_dataset("mnist", "test"), n=1000, seed=0)
    a = r["attribute_adherence"]
    print(json.dumps({"guidance": guidance, "accuracy": r["accuracy"], "frechet": r["frechet"],
                      "ratio": r["frechet_ratio"], "seen": a["seen"], "held_out": a["held_out"],
                      "by_attribute": {k: (v["seen"]["share"], v["held_out"]["share"])
                                       for k, v in a["by_attribute"].items()}}))
