"""How good each part of unCLIP is (ddpm.pipelines.unclip.stage), and the whole.

    evaluate_clip(clip, test)          zero-shot classification of the test set with the ten class prompts (the
                                       canonical one, and the mean of every template's embedding: CLIP's prompt
                                       ensembling); text-to-image retrieval with attribute captions: recall@1/@5
                                       of the captioned digit among n, and the share of the top 1/5 of its class
    evaluate_prior(unclip, test)       for n test digits' captions: the cosine similarity of the prior's sampled
                                       image embedding to the digit's own (matched), to a digit of another class
                                       (mismatched) and of the same class; the text embedding itself as the baseline;
                                       how often CLIP reads the sample as the caption's class
    evaluate_text_to_image(unclip, ..) the canonical class prompts through prior and decoder, judged like every
                                       sample set (accuracy, Frechet) and the attribute prompts (adherence)
    evaluate_variations(unclip, ...)   decodings of test digits' own embeddings: how many keep the class, and their
                                       diversity (mean pairwise distance in classifier features) beside samples of a
                                       class-conditional model and real digits of the same classes
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ddpm.checkpoints import LoadedRun, find_run, load_run
from ddpm.conditions import balanced_labels
from ddpm.datasets import (
    MNIST_LABEL_NAMES,
    ImageDataset,
    caption_templates,
    captions_for,
    class_prompts,
    mnist_edges,
    to_float,
    to_uint8,
    with_attributes,
)
from ddpm.metrics.attributes import adherence_plan, adherence_rows, score_adherence
from ddpm.metrics.classifier import classifier_features
from ddpm.metrics.judge import SampleJudge
from ddpm.pipelines.base import Sampling
from ddpm.pipelines.unclip.clip import Clip
from ddpm.pipelines.unclip.stage import PRIOR_SAMPLING, Unclip, zero_shot_logits

__all__ = ["evaluate_stage", "stage_rows", "evaluate_clip", "evaluate_prior", "evaluate_text_to_image",
           "evaluate_variations", "class_text_embeddings", "zero_shot_predictions", "retrieval",
           "pairwise_diversity", "unclip_rows"]


@torch.no_grad()
def class_text_embeddings(clip: Clip, label_names=MNIST_LABEL_NAMES, dataset: str = "mnist",
                          ensemble: bool = False) -> Tensor:
    """[K, D] unit text embeddings of the class prompts: the canonical one ("a handwritten seven"), or with
    ensemble=True the normalized mean over every caption template of the class."""
    if not ensemble:
        return clip.encode_text(class_prompts(label_names, torch.arange(len(label_names)), dataset))
    rows = [clip.encode_text(caption_templates(name, k, dataset)).mean(0) for k, name in enumerate(label_names)]
    return torch.nn.functional.normalize(torch.stack(rows), dim=-1)


@torch.no_grad()
def image_embeddings(clip: Clip, images: Tensor, batch_size: int = 1000) -> Tensor:
    """uint8 (or [-1, 1]) images [N, C, H, W] -> unit CLIP image embeddings [N, D], in batches."""
    device = clip.log_logit_scale.device
    out = [clip.encode_image(to_float(x).to(device)).cpu()
           for x in images.split(batch_size)]
    return torch.cat(out)


def zero_shot_predictions(clip: Clip, images: Tensor, ensemble: bool = False) -> Tensor:
    """CLIP's zero-shot class of each image [N] (the class prompt its embedding is most similar to)."""
    text = class_text_embeddings(clip, ensemble=ensemble).cpu()
    return zero_shot_logits(image_embeddings(clip, images), text).argmax(-1)


def retrieval(text_emb: Tensor, image_emb: Tensor, labels: Tensor, ks=(1, 5)) -> dict[str, float]:
    """Text-to-image retrieval: caption i belongs to image i. recall@k: the share of captions whose own image is
    among the k most similar; class@k: the share of the top k images that have the caption's class."""
    sim = text_emb.float() @ image_emb.float().T  # [N captions, N images]
    own = sim.diagonal().unsqueeze(1)
    rank = (sim > own).sum(1)  # images strictly more similar than the caption's own
    top = sim.topk(max(ks), dim=1).indices
    out = {}
    for k in ks:
        out[f"recall@{k}"] = float((rank < k).double().mean())
        out[f"class@{k}"] = float((labels[top[:, :k]] == labels.unsqueeze(1)).double().mean())
    return out


def _test_subset(test: ImageDataset, n: int, seed: int) -> Tensor:
    return torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:n].sort().values


def _captions(test: ImageDataset, pick: Tensor, root, seed: int) -> list[str]:
    """One random caption (saying some of the digit's style, as in training) for each picked test digit."""
    attributes = getattr(with_attributes(test, root=root), "attributes", None)
    return captions_for(test.label_names, test.labels[pick], torch.Generator().manual_seed(seed), "mnist",
                        attributes[pick] if attributes is not None else None)


@torch.no_grad()
def evaluate_clip(clip: Clip, test: ImageDataset, root=None, n_retrieval: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The report's "clip" entry (see the module docstring); zero-shot on every test digit."""
    t0 = time.perf_counter()
    e_img = image_embeddings(clip, test.images)
    report: dict[str, Any] = {"n_zero_shot": len(test), "temperature": float(1 / clip.logit_scale)}
    for name, ensemble in (("zero_shot", False), ("zero_shot_ensemble", True)):
        pred = zero_shot_logits(e_img, class_text_embeddings(clip, ensemble=ensemble).cpu()).argmax(-1)
        report[name] = float((pred == test.labels).double().mean())
        if not ensemble:
            k = len(MNIST_LABEL_NAMES)
            report["confusion"] = torch.bincount(test.labels * k + pred, minlength=k * k).reshape(k, k).tolist()
    pick = _test_subset(test, n_retrieval, seed)
    captions = _captions(test, pick, root, seed)
    report["retrieval"] = {"n": len(pick), **retrieval(clip.encode_text(captions).cpu(), e_img[pick],
                                                       test.labels[pick])}
    report["retrieval_examples"] = captions[:5]
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return report


@torch.no_grad()
def _settings(s: Sampling) -> dict[str, Any]:
    return {"sampler": s.sampler, "steps": s.steps, "guidance": s.guidance, "options": dict(s.options)}


def evaluate_prior(prior: LoadedRun, test: ImageDataset, root=None, n: int = 1000, seed: int = 0,
                   batch_size: int = 250, sampling: Sampling | None = None) -> dict[str, Any]:
    """The report's "prior" entry: n test digits' captions (attribute captions, as in training) through the prior
    (sampled as ``sampling`` says, else PRIOR_SAMPLING)."""
    sampling = sampling or PRIOR_SAMPLING
    t0 = time.perf_counter()
    pick = _test_subset(test, n, seed)
    labels = test.labels[pick]
    captions = _captions(test, pick, root, seed)
    clip = prior.frozen
    gen = torch.Generator(clip.log_logit_scale.device).manual_seed(seed)
    text = clip.encode_text(captions)
    sampled = torch.cat([prior.sample(text[i:i + batch_size], None, sampling, gen).cpu()
                         for i in range(0, len(captions), batch_size)])
    every = image_embeddings(clip, test.images)  # partners come from the whole test set
    true = every[pick]
    text = text.cpu()
    g = torch.Generator().manual_seed(seed + 1)
    other = every[torch.stack([_partner(test.labels, int(i), g, same=False) for i in pick])]
    same = every[torch.stack([_partner(test.labels, int(i), g, same=True) for i in pick])]
    cos = lambda a, b: float((a * b).sum(-1).mean())  # noqa: E731 (unit vectors)
    zs = zero_shot_logits(sampled, class_text_embeddings(clip).cpu()).argmax(-1)
    return {"n": n, **_settings(sampling),
            "matched": cos(sampled, true), "same_class": cos(sampled, same), "mismatched": cos(sampled, other),
            "text_embedding_matched": cos(text, true), "text_embedding_mismatched": cos(text, other),
            "real_same_class": cos(true, same), "real_mismatched": cos(true, other),
            "zero_shot_class": float((zs == labels).double().mean()), "examples": captions[:5],
            "seconds": round(time.perf_counter() - t0, 1)}


def _partner(labels: Tensor, i: int, g: torch.Generator, same: bool) -> Tensor:
    """The index of a random other digit with the same (or another) label than digit i (of the whole set)."""
    mask = (labels == labels[i]) if same else (labels != labels[i])
    mask[i] = False
    options = mask.nonzero().squeeze(1)
    return options[torch.randint(len(options), (), generator=g)]


@torch.no_grad()
def generate(unclip: Unclip, prompts: list[str], seed: int, batch_size: int = 100, progress: bool = False) -> Tensor:
    """uint8 images for the prompts through prior and decoder, one generator seeded ``seed`` for all."""
    gen = torch.Generator(unclip.clip.log_logit_scale.device).manual_seed(seed)
    return torch.cat([to_uint8(unclip(prompts[i:i + batch_size], gen)[0]).cpu()
                      for i in tqdm(range(0, len(prompts), batch_size), desc=f"unCLIP: {len(prompts)} images",
                                    leave=False, disable=not progress)])


def evaluate_text_to_image(unclip: Unclip, test: ImageDataset, root=None, n: int = 1000, *, classifier=None,
                           seed: int = 0, batch_size: int = 100, progress: bool = False,
                           judge: SampleJudge | None = None) -> dict[str, Any]:
    """The report's "text_to_image" entry: n canonical class prompts (class-balanced) and n attribute prompts
    (ddpm.metrics.attributes) through prior and decoder."""
    t0 = time.perf_counter()
    judge = judge or SampleJudge("mnist", test, root, classifier, n, seed, progress)
    labels = balanced_labels(n, len(MNIST_LABEL_NAMES))
    images = generate(unclip, class_prompts(MNIST_LABEL_NAMES, labels, "mnist"), seed, batch_size, progress)
    report = {"n": n, "frechet_floor": judge.floor, **judge(images, labels)}
    plan = adherence_plan(n)
    styled = generate(unclip, plan.prompts, seed + 1, batch_size, progress)
    predicted = classifier_features(judge.clf, styled)[1].argmax(dim=1)
    report["attribute_adherence"] = score_adherence(styled, plan, mnist_edges(root), predicted=predicted,
                                                    baseline=(images, labels))
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return report


def pairwise_diversity(features: Tensor, groups: int) -> float:
    """Mean Euclidean distance between the members of each group (features [groups * m, F], group g at rows
    g * m ... g * m + m - 1), averaged over groups."""
    f = features.float().reshape(groups, -1, features.shape[-1])
    d = torch.cdist(f, f)  # [groups, m, m]
    m = f.shape[1]
    return float(d.sum() / (groups * m * (m - 1)))


@torch.no_grad()
def evaluate_variations(unclip: Unclip, test: ImageDataset, root=None, n_sources: int = 100, per: int = 8, *,
                        class_run: LoadedRun | None = None, classifier=None, seed: int = 0, progress: bool = False,
                        judge: SampleJudge | None = None) -> dict[str, Any]:
    """The report's "variations" entry: ``per`` decodings of each of n_sources test digits' embeddings; the share
    classified as the source's class, and diversity within each source's set, beside real test digits of the same
    classes and (class_run given) a class-conditional model's samples of those classes, in groups of ``per``."""
    t0 = time.perf_counter()
    judge = judge or SampleJudge("mnist", test, root, classifier, n_sources * per, seed, progress)
    pick = _test_subset(test, n_sources, seed)
    labels = test.labels[pick]
    gen = torch.Generator(unclip.clip.log_logit_scale.device).manual_seed(seed)
    variations = torch.cat([to_uint8(unclip.variations(to_float(test.images[pick[i:i + 10]]), per, gen)).cpu()
                            for i in range(0, n_sources, 10)])
    each = labels.repeat_interleave(per)
    feats, logits = classifier_features(judge.clf, variations)
    src_feats = classifier_features(judge.clf, test.images[pick])[0].repeat_interleave(per, 0)
    report = {"n_sources": n_sources, "per_source": per, "decoder": {**_settings(unclip.decoder_sampling),
                                                                      "guidance": unclip.variations_guidance},
              "keep_class": float((logits.argmax(1) == each).double().mean()),
              "diversity": pairwise_diversity(feats, n_sources),
              "distance_to_source": float((feats - src_feats).norm(dim=1).mean())}
    g = torch.Generator().manual_seed(seed + 2)
    real = torch.cat([test.images[(test.labels == y).nonzero().squeeze(1)][torch.randperm(
        int((test.labels == y).sum()), generator=g)[:per]] for y in labels.tolist()])
    report["real_diversity"] = pairwise_diversity(classifier_features(judge.clf, real)[0], n_sources)
    if class_run is not None:
        device = class_run.diffusion.betas.device
        cg = torch.Generator(device).manual_seed(seed)
        samples = torch.cat([to_uint8(class_run.sample(c.to(device), None, Sampling("dpmpp-2m", 15), cg)).cpu()
                             for c in each.split(80)])
        f, lg = classifier_features(judge.clf, samples)
        report["class_model"] = {"run": str(class_run.path), "guidance": class_run.config.train.guidance,
                                 "accuracy": float((lg.argmax(1) == each).double().mean()),
                                 "diversity": pairwise_diversity(f, n_sources)}
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return report


def unclip_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """Rows of the evaluate table for a CLIP, a prior or a decoder (with its prior)."""
    rows = []
    if c := report.get("clip"):
        r = c["retrieval"]
        rows += [("zero-shot accuracy", f"{c['zero_shot']:.2%} (canonical prompts), {c['zero_shot_ensemble']:.2%} "
                                        f"(template ensemble), {c['n_zero_shot']} test digits"),
                 ("text -> image retrieval", f"recall@1 {r['recall@1']:.2%}, recall@5 {r['recall@5']:.2%} (chance "
                                             f"{1 / r['n']:.2%}, {5 / r['n']:.2%}); the "
                                             f"caption's class in the top 1 {r['class@1']:.2%}, top 5 "
                                             f"{r['class@5']:.2%} ({r['n']} attribute captions and digits)"),
                 ("temperature", f"{c['temperature']:.4f}")]
    if p := report.get("prior"):
        rows += [("prior: cosine to the digit", f"matched {p['matched']:.3f}, same class {p['same_class']:.3f}, "
                                                f"other class {p['mismatched']:.3f} (real digits: same class "
                                                f"{p['real_same_class']:.3f}, other {p['real_mismatched']:.3f})"),
                 ("  text embedding itself", f"matched {p['text_embedding_matched']:.3f}, other class "
                                             f"{p['text_embedding_mismatched']:.3f}"),
                 ("  CLIP reads the sample as", f"the caption's class {p['zero_shot_class']:.2%} ({p['n']} captions)")]
    if t := report.get("text_to_image"):
        rows += [("text -> image accuracy", f"{t['accuracy']:.2%} ({t['n']} class prompts)"),
                 ("text -> image Frechet", f"{t['frechet']:.3f} ({t['frechet_ratio']:.2f}x the floor "
                                           f"{t['frechet_floor']:.3f})")]
        rows += adherence_rows(t["attribute_adherence"])
    if v := report.get("variations"):
        extra = ""
        if cm := v.get("class_model"):
            extra = f"; class model {cm['diversity']:.2f} (accuracy {cm['accuracy']:.2%})"
        rows += [("variations keep the class", f"{v['keep_class']:.2%} ({v['n_sources']} digits x {v['per_source']})"),
                 ("variations' diversity", f"{v['diversity']:.2f} (real digits of the class {v['real_diversity']:.2f}"
                                           f"{extra}); distance to the source {v['distance_to_source']:.2f}")]
    return rows


def evaluate_stage(loaded: LoadedRun, test: ImageDataset, root, *, n_samples: int, classifier, seed: int,
                   batch_size: int, progress: bool, device="cpu", prior: LoadedRun | None = None,
                   class_run: LoadedRun | None = None, prior_sampling: Sampling | None = None,
                   decoder_sampling: Sampling | None = None, sampler: str | None = None,
                   steps: int | None = None, guidance: float | None = None, options: dict[str, Any] | None = None,
                   **_) -> dict[str, Any]:
    """The report entries of a CLIP ("clip"), a prior ("prior") or a decoder ("text_to_image" through ``prior``,
    default runs/mnist-prior else the shipped one, and "variations" beside ``class_run``, default runs/mnist
    else the shipped mnist.pt)."""
    batch_size = max(batch_size, 100)
    if loaded.config.kind == "clip":
        return {"clip": evaluate_clip(loaded.model, test, root, n_retrieval=n_samples or 1000, seed=seed)}
    if loaded.config.kind == "prior":
        # evaluate --sampler/--steps/--guidance on the prior's defaults
        prior_sampling = prior_sampling or PRIOR_SAMPLING.override(sampler, steps, guidance, options)
        return {"prior": evaluate_prior(loaded, test, root, n=n_samples or 1000, seed=seed, sampling=prior_sampling)}
    prior = prior or load_run(find_run(None, "mnist-prior"), device=device)
    class_run = class_run or load_run(find_run(None, "mnist"), device=device)
    unclip = Unclip(prior, loaded, prior_sampling, decoder_sampling)
    report: dict[str, Any] = {"unclip": unclip.describe()}
    judge = SampleJudge("mnist", test, root, classifier, n_samples or 800, seed, progress)
    if n_samples:
        report["text_to_image"] = evaluate_text_to_image(unclip, test, root, n_samples, seed=seed,
                                                         batch_size=batch_size, progress=progress, judge=judge)
    report["variations"] = evaluate_variations(unclip, test, root, class_run=class_run, seed=seed,
                                               progress=progress, judge=judge)
    return report


def stage_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    return unclip_rows(report)
