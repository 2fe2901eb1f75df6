"""unCLIP: the contrastive loss, the embedding conditioner (zero = null), the prior (x0-prediction on CLIP
embeddings), and the three stages composed by the same trainer, samplers, checkpoints and CLI (tiny networks)."""

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ddpm.checkpoints import CheckpointError, load_run
from ddpm.cli import main
from ddpm.config import Config
from ddpm.diffusion import GaussianDiffusion
from ddpm.exports import export_model
from ddpm.nn.conditioning import EmbeddingConditioner
from ddpm.nn.unet import UNET_PRESETS, UNet
from ddpm.pipelines.unclip.clip import Clip, ClipConfig, contrastive_losses
from ddpm.pipelines.unclip.evaluate import pairwise_diversity, retrieval
from ddpm.pipelines.unclip.prior import DiffusionPrior, PriorConfig
from ddpm.pipelines.unclip.stage import (
    DECODER_SAMPLING,
    PRIOR_SAMPLING,
    Unclip,
    UnclipConfig,
    check_unclip,
    from_prior_space,
    slerp,
    to_prior_space,
)
from ddpm.presets import get_preset
from ddpm.samplers import guided, sample, with_null
from ddpm.schedules import make_betas
from ddpm.training import Trainer

TINY_CLIP = dict(channels=(8, 16), embed_dim=16, text_dim=16, text_layers=1)
TINY_UNET = dict(ch=8, num_groups=4, num_res_blocks=1, text_dim=16, embed_dim=16, attn_resolutions=(),
                 cross_attn_resolutions=(14,), ch_mult=(1, 2))
STEPS = dict(steps=3, batch_size=16, sample_steps=3, ckpt_every=0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits):
    """A tiny CLIP, then a tiny prior and decoder on it, a few steps each."""
    folder = tmp_path_factory.mktemp("unclip")
    clip = get_preset("mnist-clip", **STEPS)
    clip = clip.replace(model=ClipConfig(**{**clip.model.to_dict(), **TINY_CLIP}))
    Trainer(clip, folder / "clip", device="cpu", progress=False, dataset=digits).fit()
    on_clip = UnclipConfig(clip=str(folder / "clip"))
    prior = get_preset("mnist-prior", **STEPS).replace(model=PriorConfig(dim=16, hidden=32, depth=2),
                                                       stage=on_clip)
    Trainer(prior, folder / "prior", device="cpu", progress=False, dataset=digits).fit()
    decoder = get_preset("mnist-decoder", **STEPS).replace(stage=on_clip, model=UNET_PRESETS["mnist-decoder"])
    decoder = decoder.replace(**TINY_UNET)
    Trainer(decoder, folder / "decoder", device="cpu", progress=False, dataset=digits).fit()
    return folder


def test_the_contrastive_loss_is_the_symmetric_cross_entropy_by_hand():
    g = torch.Generator().manual_seed(0)
    a, b = (F.normalize(torch.randn(5, 8, generator=g), dim=-1) for _ in range(2))
    losses = contrastive_losses(a, b, 3.0)
    logits = 3.0 * a @ b.T
    for i in range(5):  # -log softmax over the texts of image i, and over the images of text i
        by_hand = (-(logits[i, i] - logits[i].logsumexp(0)) - (logits[i, i] - logits[:, i].logsumexp(0))) / 2
        assert losses[i].item() == pytest.approx(by_hand.item(), abs=1e-5)
    assert contrastive_losses(a, a, 100.0).max() < 1e-3 < contrastive_losses(a, b, 100.0).min()  # aligned pairs
    assert torch.allclose(contrastive_losses(b, a, 3.0), losses, atol=1e-6)  # symmetric


def test_clip_embeddings_are_unit_vectors_and_its_temperature_is_capped():
    clip = Clip(ClipConfig(**TINY_CLIP)).eval()
    e = clip.encode_image(torch.rand(3, 1, 28, 28) * 2 - 1)
    t = clip.encode_text(["a thick seven", "the digit 3", "number 1"])
    assert e.shape == t.shape == (3, 16) and torch.allclose(e.norm(dim=-1), torch.ones(3))
    assert clip.logit_scale.item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        clip.log_logit_scale.fill_(10.0)
    assert clip.logit_scale.item() == pytest.approx(100.0)  # CLIP's cap
    with pytest.raises(ValueError, match="empty caption"):
        clip.encode_text(["a seven", ""])
    with pytest.raises(ValueError, match=r"encodes images \[B, 1, 28, 28\]"):
        clip.encode_image(torch.zeros(2, 1, 14, 14))
    with pytest.raises(ValueError, match="one caption"):
        clip(torch.zeros(2, 1, 28, 28), ["a seven"])


def test_a_tiny_clip_learns_to_tell_digits_apart_by_their_captions(digits):
    torch.manual_seed(0)
    keep = (digits.labels == 0) | (digits.labels == 1)
    x = digits.images[keep][:48].float() / 127.5 - 1
    y = digits.labels[keep][:48]
    clip = Clip(ClipConfig(**TINY_CLIP))
    opt = torch.optim.Adam(clip.parameters(), lr=3e-3)
    captions = ["a handwritten zero" if k == 0 else "a handwritten one" for k in y.tolist()]
    for _ in range(40):
        loss = clip(x, captions).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        sim = clip.encode_image(x) @ clip.encode_text(["a handwritten zero", "a handwritten one"]).T
    assert (sim.argmax(1) == y).float().mean() > 0.95  # zero-shot, on the digits it saw


def test_the_embedding_conditioner_maps_zero_to_the_null_condition():
    cond = EmbeddingConditioner(8, 12, tokens=4, context_dim=6)
    torch.nn.init.normal_(cond.null_emb)
    e = F.normalize(torch.randn(3, 8), dim=-1)
    e[1] = 0
    vec, tokens, mask = cond(e)
    assert vec.shape == (3, 12) and tokens.shape == (3, 4, 6) and mask.all()
    assert torch.equal(vec[1], cond.null_emb) and torch.equal(tokens[1], cond.null_tokens)
    assert not torch.equal(vec[0], cond.null_emb)
    assert torch.allclose(vec[0], cond.to_emb(e[0] * math.sqrt(8)))  # unit vectors scaled by sqrt(D)
    dropped = cond.replace_with_null(e, torch.tensor([True, False, False]))
    assert not dropped[0].any() and torch.equal(dropped[2], e[2])
    assert torch.equal(cond.to_ids(None, 2, torch.device("cpu")), torch.zeros(2, 8))
    for bad in (torch.zeros(3, 7), torch.zeros(3, 8, dtype=torch.long), torch.full((3, 8), float("nan"))):
        with pytest.raises(ValueError, match="CLIP embeddings"):
            cond.to_ids(bad, 3, torch.device("cpu"))
    assert torch.equal(with_null(e)[3:], torch.zeros(3, 8))  # guidance's null: zero embeddings


def test_the_decoder_sees_the_embedding_and_guidance_contrasts_it_with_zero():
    torch.manual_seed(0)
    net = UNet(UNET_PRESETS["mnist-decoder"].__class__(**{**UNET_PRESETS["mnist-decoder"].to_dict(),
                                                          **TINY_UNET})).eval()
    for w in net.parameters():  # wake the zero-initialized output layers, which would hide the condition
        if w.dim() > 1 and not w.any():
            torch.nn.init.normal_(w, std=0.1)
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([10, 500])
    e = F.normalize(torch.randn(2, 16), dim=-1)
    out = net(x, t, e)
    assert not torch.allclose(out, net(x, t, -e)) and not torch.allclose(out, net(x, t, None))
    assert torch.allclose(net(x, t, torch.zeros(2, 16)), net(x, t, None))
    by_hand = net(x, t, None) + 3.0 * (out - net(x, t, None))
    for batched in (False, True):
        assert torch.allclose(guided(net, 3.0, batched=batched)(x, t, e), by_hand, atol=1e-5)


def test_a_tiny_prior_learns_which_embedding_goes_with_which_condition():
    """x0-prediction on unit vectors scaled by sqrt(D): four conditions, each with its own target direction."""
    torch.manual_seed(0)
    d = 8
    conds, targets = (F.normalize(torch.randn(4, d), dim=-1) for _ in range(2))
    prior = DiffusionPrior(PriorConfig(dim=d, hidden=64, depth=2, cond_drop_prob=0.1))
    diffusion = GaussianDiffusion(make_betas("cosine", 100), prediction="x0")
    opt = torch.optim.Adam(prior.parameters(), lr=3e-3)
    for _ in range(400):
        k = torch.randint(4, (64,))
        loss = diffusion.training_loss(prior, to_prior_space(targets[k]), conds[k])
        opt.zero_grad()
        loss.backward()
        opt.step()
    prior.eval()
    with torch.no_grad():
        z = sample(prior, diffusion, (4, d), conds, sampler="ddim", steps=20, guidance_scale=2.0, threshold="none",
                   generator=torch.Generator().manual_seed(0))
    cos = from_prior_space(z) @ targets.T
    assert cos.diagonal().min() > 0.9 and (cos.argmax(1) == torch.arange(4)).all()


def test_slerp_retrieval_and_diversity_by_hand():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    path = slerp(a, b, torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(path, torch.tensor([[1.0, 0.0], [0.5 ** 0.5, 0.5 ** 0.5], [0.0, 1.0]]), atol=1e-6)
    emb = torch.eye(4)
    labels = torch.tensor([0, 0, 1, 1])
    text = torch.tensor([[1, 0.5, 0.2, 0], [0.2, 1, 0.5, 0], [0, 0, 1, 0.5], [0.5, 0, 0.2, 1]])
    ranked = retrieval(text, emb, labels, ks=(1, 2))  # second best: image 1, 2, 3, 0 (of class 0, 1, 1, 0)
    assert ranked["recall@1"] == 1.0 and ranked["class@2"] == (2 + 1 + 2 + 1) / 8
    swapped = retrieval(emb[[1, 0, 2, 3]], emb, labels, ks=(1,))  # captions 0 and 1 point at each other's image
    assert swapped["recall@1"] == 0.5 and swapped["class@1"] == 1.0
    f = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0], [0.0, 1.0]])
    assert pairwise_diversity(f, 2) == pytest.approx((5.0 + 1.0) / 2)


def test_unclip_configs_name_their_clip_and_round_trip():
    for name in ("mnist-clip", "mnist-prior", "mnist-decoder"):
        config = get_preset(name)
        assert Config.from_dict(config.to_dict()) == config
    assert get_preset("mnist-prior").sampler_defaults == {"threshold": "none"}  # embeddings are not pixels
    with pytest.raises(ValueError, match="needs an UnclipConfig stage"):
        get_preset("mnist-decoder").replace(stage=None)
    with pytest.raises(ValueError, match="takes stage=none, got UnclipConfig"):
        get_preset("mnist").replace(stage=UnclipConfig())


def test_the_three_stages_compose_and_record_their_clip(runs, tmp_path):
    prior, decoder = load_run(runs / "prior"), load_run(runs / "decoder")
    clip = load_run(runs / "clip")
    assert prior.frozen is not None and prior.config.stage.fingerprint == decoder.config.stage.fingerprint
    unclip = Unclip(prior, decoder, dataclasses.replace(PRIOR_SAMPLING, steps=3),
                    dataclasses.replace(DECODER_SAMPLING, steps=2))
    images, e = unclip(["a thick seven", "a thin one"], torch.Generator().manual_seed(0))
    assert images.shape == (2, 1, 28, 28) and images.abs().max() <= 1
    assert torch.allclose(e.norm(dim=-1), torch.ones(2))
    assert unclip.variations(images, 3).shape == (6, 1, 28, 28)
    assert unclip.describe()["clip"] == str(runs / "clip")
    with pytest.raises(ValueError, match="not a diffusion prior"):
        check_unclip(decoder, decoder)
    # another CLIP (other weights) under the recorded path is refused when a stage loads
    other = tmp_path / "other"
    export_model(runs / "clip", tmp_path / "clip.pt")
    ckpt = torch.load(tmp_path / "clip.pt", weights_only=True)
    ckpt["ema"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in ckpt["ema"].items()}
    other.mkdir()
    torch.save(ckpt, other / "checkpoint.pt")
    cfg = json.loads(json.dumps(torch.load(runs / "decoder" / "checkpoint.pt", weights_only=True)["config"]))
    assert cfg["stage"]["clip"] == str(runs / "clip")
    export_model(runs / "decoder", tmp_path / "decoder.pt", half=True, frozen=tmp_path / "clip.pt")
    assert load_run(tmp_path / "decoder.pt").config.stage.clip == "clip.pt"  # beside it: named by its file name
    moved = torch.load(tmp_path / "decoder.pt", weights_only=True)
    moved["config"]["stage"]["clip"] = str(other)
    torch.save(moved, tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError, match="not the one this unCLIP stage was trained on"):
        load_run(tmp_path / "wrong.pt")
    assert clip.config.network == "clip"


def test_the_cli_samples_text_to_image_and_variations(runs, tmp_path, capsys):
    prior, decoder = str(runs / "prior"), str(runs / "decoder")
    out = tmp_path / "u.png"
    assert main(["unclip", "--prior", prior, "--decoder", decoder, "--prompt", "a thick seven", "--n", "3",
                 "--decoder-steps", "2", "--prior-steps", "3", "--out", str(out)]) == 0
    record = json.loads((tmp_path / "u.png.json").read_text())  # the picture's record: its name + .json
    assert record["prompts"] == ["a thick seven"] and record["prior"] == str(runs / "prior" / "checkpoint.pt")
    assert record["decoder"] == str(runs / "decoder" / "checkpoint.pt") and record["clip"] == str(runs / "clip")
    assert record["prior_steps"] == 3 and record["decoder_steps"] == 2
    assert record["decoder_sampler"] == "ddim" and record["decoder_options"]["eta"] == 1.0  # stochastic by default
    assert main(["unclip", "--variations", "5", "--decoder", decoder, "--n", "3", "--decoder-steps", "2", "--out",
                 str(tmp_path / "v.png")]) == 0
    assert Image.open(tmp_path / "v.png").size == (2 * (4 * 28 + 5 * 2), 2 * (28 + 2 * 2))  # the digit + 3
    ink = Image.new("L", (56, 56), 255)  # a dark stroke on white paper: inverted to MNIST's light on dark
    ink.paste(0, (24, 8, 32, 48))
    ink.save(tmp_path / "drawn.png")
    assert main(["unclip", "--variations", str(tmp_path / "drawn.png"), "--decoder", decoder, "--n", "2",
                 "--decoder-steps", "2", "--out", str(tmp_path / "d.png")]) == 0
    assert "drawn.png" in capsys.readouterr().out


def test_the_cli_evaluates_each_stage(runs, tmp_path):
    assert main(["evaluate", "--run", str(runs / "clip"), "--n-samples", "50", "--out", str(tmp_path / "c.json")]) == 0
    clip = json.loads((tmp_path / "c.json").read_text())["clip"]
    assert 0 <= clip["zero_shot"] <= 1 and sum(map(sum, clip["confusion"])) == 10000
    assert set(clip["retrieval"]) >= {"recall@1", "recall@5", "class@1", "class@5"}
    assert main(["evaluate", "--run", str(runs / "prior"), "--n-samples", "20", "--steps", "3", "--out",
                 str(tmp_path / "p.json")]) == 0
    prior = json.loads((tmp_path / "p.json").read_text())["prior"]
    assert -1 <= prior["mismatched"] <= 1 and prior["steps"] == 3


def test_unclip_mistakes_fail_in_one_line(runs, tmp_path, capsys):
    prior, decoder, clip = str(runs / "prior"), str(runs / "decoder"), str(runs / "clip")
    cases = [(["sample", "--run", clip], "is a CLIP"),
             (["sample", "--run", prior], "unclip --prior"),
             (["sample", "--run", decoder], "--variations"),
             (["unclip", "--prior", decoder, "--decoder", decoder], "is not an unCLIP prior"),
             (["unclip", "--prior", prior, "--decoder", prior], "is not an unCLIP decoder"),
             (["unclip", "--prior", prior, "--decoder", decoder, "--prompt", "a purple seven"], "unknown word"),
             (["unclip", "--prior", prior, "--decoder", decoder, "--class", "7"], "unrecognized arguments: --class"),
             (["unclip", "--variations", "99999", "--decoder", decoder], "the test set has digits"),
             (["unclip", "--variations", str(tmp_path / "none.png"), "--decoder", decoder], "no such file"),
             (["unclip", "--variations", "1", "--prompt", "a seven"], "drop --prompt"),
             (["sample", "--prior", prior], "unrecognized arguments: --prior"),
             (["unclip", "--prior", prior, "--decoder", decoder, "--steps", "3"], "unrecognized arguments: --steps"),
             (["unclip", "--sampler", "ancestral"], "unrecognized arguments: --sampler"),
             (["unclip", "--prior", prior, "--decoder", decoder, "--prior-steps", "5000"], "T = 1000"),
             # the spellings of one release ago name the command that took them over
             (["sample", "--unclip", "--prior", prior, "--decoder", decoder], "use python -m ddpm unclip --prompt"),
             (["sample", "--variations", "1", "--decoder", decoder], "use python -m ddpm unclip --variations"),
             (["evaluate", "--run", decoder, "--prior", prior], "use python -m ddpm unclip --evaluate")]
    for args, message in cases:
        try:
            code = main(args)
        except SystemExit as e:  # argparse: a flag the command does not take
            code = e.code
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and "Traceback" not in err and "\n" not in err, (args, err)
