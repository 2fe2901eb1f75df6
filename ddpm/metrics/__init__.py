"""Evaluate a trained run: bits/dim under the variational bound, and the quality of its samples.

Two families of numbers:

- **Bits/dim** of test images under the variational bound of Ho et al. (Eq. 5), split into its terms:
  the prior L_T, the decoder L_0 and the KL terms L_{t-1} summed over ranges of t. The bound needs one
  network evaluation per image and timestep (T of them per image), so it is measured on a small subset
  of the test set (``bits_per_dim_dataset``; the bound itself lives in ``ddpm.likelihood``).
- **Sample quality** for MNIST-like data (MNIST, Fashion-MNIST): a small CNN classifier, trained once on
  the training set and cached under ``data/classifiers/<dataset>.pt``, judges generated images. The
  *conditional accuracy* asks: does a sample generated for class c get classified as c? The *Frechet
  distance* compares the Gaussians fitted to the classifier's penultimate-layer features of generated
  and test images; next to it stands the real-data floor, the same distance between as many training
  images and the test set. This is NOT the Inception FID of the literature: its values are not
  comparable with published FID numbers, only with each other. For CIFAR-10, the standard Inception FID
  is computed when pytorch-fid (with its weights already downloaded) is installed; otherwise a message
  says so.
- **Attribute adherence** of text models of digits: for each style word (thin, thick, slanted left,
  upright, slanted right, narrow, wide) and digit, the share of samples prompted with it whose measured
  style falls in the tercile of the real digits of that class that the word names (chance: one third),
  for the combinations seen in training and for the held-out ones apart.

    attributes.py   the attribute prompts, and the adherence of their samples
    classifier.py   SmallCNN, training and caching it, its features, conditional accuracy
    frechet.py      feature statistics, the Frechet distance, Inception FID (optional dependencies)
    evaluate.py     bits/dim of a dataset, class-balanced samples, evaluate_run and its report table
    judge.py        a set of images judged (accuracy, Frechet and its floor), PSNR, speckle: for every kind
    sweep.py        quality per model call: several samplers and step counts, judged alike

A kind of run with a judgement of its own (an autoencoder's reconstructions, a super-resolution model on real
digits, each stage of unCLIP) has it in its pipeline folder (evaluate.py), named by its Kind.evaluation.

The command ``python -m ddpm evaluate`` lives in ``ddpm.cli.evaluate``.
"""

from ddpm.likelihood import NUM_T_RANGES
from ddpm.metrics.attributes import adherence_plan, score_adherence
from ddpm.metrics.classifier import (
    CLASSIFIER_DATASETS,
    SmallCNN,
    classifier_features,
    classifier_path,
    conditional_accuracy,
    load_or_train_classifier,
    train_classifier,
)
from ddpm.metrics.evaluate import (
    FRECHET_NOTE,
    attribute_adherence,
    bits_per_dim_dataset,
    evaluate_run,
    format_report,
    generate_samples,
    report_path,
    sample_conditions,
)
from ddpm.metrics.frechet import feature_statistics, frechet_distance, inception_fid
from ddpm.metrics.judge import SampleJudge, mean_psnr, psnr, speckle, speckled, speckled_share, stray_pixels
from ddpm.metrics.sweep import format_sweep, quality_sweep

__all__ = ["bits_per_dim_dataset", "SmallCNN", "train_classifier", "load_or_train_classifier", "classifier_path",
           "classifier_features", "feature_statistics", "frechet_distance", "conditional_accuracy",
           "generate_samples", "inception_fid", "evaluate_run", "report_path", "format_report",
           "CLASSIFIER_DATASETS", "NUM_T_RANGES", "FRECHET_NOTE", "quality_sweep", "format_sweep", "adherence_plan",
           "score_adherence", "attribute_adherence", "sample_conditions", "SampleJudge", "speckle", "speckled",
           "speckled_share", "stray_pixels", "psnr", "mean_psnr"]
