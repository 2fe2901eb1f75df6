"""The U-Net eps_theta(x_t, t, cond) (ddpm/nn/unet.py)."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm.nn import MNIST_CAPTION_VOCAB, UNET_PRESETS, UNet, UNetConfig

MNIST_TRAIN = Path(__file__).resolve().parents[1] / "data" / "mnist" / "train-images-idx3-ubyte.gz"


def randomized(model: UNet, std: float = 0.1) -> UNet:
    """The paper's init zeroes the last layer of every branch (the output is exactly 0); perturb all
    weights so that the tests below see every path of the network."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn_like(p))
    return model


def tiny(**overrides) -> UNet:
    return randomized(UNet.from_preset("tiny", **overrides)).eval()


# ----------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [28, 32])
def test_output_shape(channels, size):
    model = tiny(in_channels=channels, image_size=size, ch_mult=(1, 2, 2))
    x = torch.randn(2, channels, size, size)
    out = model(x, torch.tensor([0, 999]))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.isfinite(out).all()


def test_fresh_model_predicts_zero():
    # zero-initialized output conv: eps_theta = 0 at the start, so L_simple starts at E[eps^2] = 1
    model = UNet.from_preset("tiny")
    assert torch.all(model(torch.randn(2, 1, 28, 28), torch.tensor([3, 4])) == 0)


def test_t_forms():
    model = tiny()
    x = torch.randn(3, 1, 28, 28)
    out = model(x, torch.tensor([5, 5, 5]))
    torch.testing.assert_close(model(x, torch.tensor([5.0, 5.0, 5.0])), out)  # float t
    torch.testing.assert_close(model(x, torch.tensor(5)), out)  # one t for the batch
    with pytest.raises(ValueError, match=r"t must have shape \[B\]"):
        model(x, torch.tensor([1, 2]))


def test_output_changes_with_t():
    model = tiny()
    x = torch.randn(2, 1, 28, 28)
    assert not torch.allclose(model(x, torch.tensor([0, 0])), model(x, torch.tensor([500, 500])))


# ----------------------------------------------------------------------------------- conditioning


def test_output_changes_with_class_and_null_differs():
    model = tiny(cond="class")
    x, t = torch.randn(1, 1, 28, 28).repeat(3, 1, 1, 1), torch.tensor([100, 100, 100])
    out = model(x, t, torch.tensor([3, 5, -1]))
    assert not torch.allclose(out[0], out[1])  # class 3 vs class 5
    assert not torch.allclose(out[0], out[2])  # class 3 vs the null class
    torch.testing.assert_close(model(x, t, None), out[2:].expand(3, -1, -1, -1))  # None = null for all
    with pytest.raises(ValueError, match=r"0\.\.9"):
        model(x, t, torch.tensor([0, 1, 10]))


def test_output_changes_with_text():
    model = tiny(cond="text", vocab=MNIST_CAPTION_VOCAB, cross_attn_resolutions=(14,))
    x, t = torch.randn(1, 1, 28, 28).repeat(3, 1, 1, 1), torch.tensor([100, 100, 100])
    out = model(x, t, ["a handwritten seven", "the digit 2", ""])
    assert not torch.allclose(out[0], out[1])
    assert not torch.allclose(out[0], out[2])
    torch.testing.assert_close(model(x, t, None), out[2:].expand(3, -1, -1, -1))
    ids = model.conditioner.tokenizer.encode(["a handwritten seven", "the digit 2", ""], model.config.max_prompt_len)
    torch.testing.assert_close(model(x, t, ids), out)
    with pytest.raises(ValueError, match=r"unknown word\(s\) \['blue'\]"):
        model(x, t, ["a blue seven", "", ""])


def test_unconditional_model_rejects_a_condition():
    with pytest.raises(ValueError, match="unconditional"):
        tiny()(torch.randn(1, 1, 28, 28), torch.tensor([1]), torch.tensor([3]))


def test_condition_dropout_is_per_sample_and_only_in_training():
    model = tiny(cond="class", cond_drop_prob=0.5)
    x, t = torch.randn(1, 1, 28, 28).repeat(64, 1, 1, 1), torch.full((64,), 100)
    labels = torch.full((64,), 4)
    with torch.no_grad():
        cond_out, null_out = model(x[:1], t[:1], labels[:1]), model(x[:1], t[:1], None)
        torch.testing.assert_close(model(x, t, labels), cond_out.expand(64, -1, -1, -1))  # eval: no dropout
        model.train()  # dropout=0 in "tiny", so the only randomness is the condition dropout
        torch.manual_seed(1)
        out = model(x, t, labels)
    is_null = torch.isclose(out, null_out, atol=1e-5).flatten(1).all(1)
    is_cond = torch.isclose(out, cond_out, atol=1e-5).flatten(1).all(1)
    assert torch.all(is_null ^ is_cond)  # each sample is one or the other
    assert 10 < is_null.sum() < 54  # about half, chosen per sample: never the whole batch


@pytest.mark.parametrize(
    "overrides",
    [
        dict(cond="class"),
        dict(cond="text", vocab=MNIST_CAPTION_VOCAB, cross_attn_resolutions=(14,), film=True),
    ],
    ids=["class", "text-film-crossattn"],
)
def test_every_parameter_gets_a_gradient(overrides):
    model = tiny(attn_resolutions=(14,), **overrides).train()
    x = torch.randn(4, 1, 28, 28)
    cond = torch.tensor([1, 2, 3, -1]) if overrides["cond"] == "class" else ["a seven", "number 2", "", "one"]
    model(x, torch.tensor([0, 10, 500, 999]), cond).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ------------------------------------------------------------------------------ config and presets


def test_ddpm_cifar10_parameter_count():
    model = UNet.from_preset("ddpm-cifar10")
    assert sum(p.numel() for p in model.parameters()) == 35_746_307  # the converted public checkpoint


def test_mnist_preset():
    c = UNET_PRESETS["mnist"]
    assert (c.in_channels, c.image_size, c.resolutions) == (1, 28, (28, 14, 7))
    n = sum(p.numel() for p in UNet(c).parameters())
    assert 1_000_000 <= n <= 2_000_000
    assert UNet.from_preset("mnist-class").config.cond == "class"
    assert UNet.from_preset("mnist-text").config.cond == "text"


def test_bad_image_size_names_valid_sizes():
    with pytest.raises(ValueError, match=r"image_size 30 is not divisible by 4 .*sizes near it: 28, 32"):
        UNetConfig(in_channels=1, image_size=30, ch_mult=(1, 2, 2), attn_resolutions=())
    model = tiny(ch_mult=(1, 2, 2))
    with pytest.raises(ValueError, match=r"30x30 is not divisible by 4 .*28, 32"):
        model(torch.randn(1, 1, 30, 30), torch.tensor([1]))


def test_bad_channel_count():
    with pytest.raises(ValueError, match=r"3 channels .* in_channels=1"):
        tiny()(torch.randn(1, 3, 28, 28), torch.tensor([1]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(cond="clip"), "unknown cond 'clip'"),
        (dict(num_groups=24), "num_groups=24 does not divide"),
        (dict(attn_resolutions=(14,)), r"includes \[14\], not a resolution"),
        (dict(cond="text"), "needs a vocabulary"),
        (dict(cross_attn_resolutions=(8,)), "needs cond='text'"),
        (dict(downsample_pad="reflect"), "unknown downsample_pad 'reflect'"),
    ],
)
def test_bad_config_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UNetConfig(**kwargs)


def test_presets_and_overrides():
    with pytest.raises(ValueError, match="known presets: .*ddpm-cifar10.*mnist.*tiny"):
        UNet.from_preset("resnet")
    with pytest.raises(ValueError, match=r"unknown UNetConfig field\(s\) \['channels'\]"):
        UNet.from_preset("tiny", channels=3)
    model = UNet.from_preset("tiny", in_channels=3, ch_mult=[1, 2])  # lists are stored as tuples
    assert model.config.in_channels == 3 and model.config.ch_mult == (1, 2)


def test_configs_saved_before_norm_eps_and_downsample_pad_keep_their_network():
    # Checkpoints written before these fields existed (data/pretrained/mnist.pt) lack them: the defaults must
    # be the network those were trained with (PyTorch's GroupNorm eps, 1 pixel of padding on every side).
    old = {k: v for k, v in UNET_PRESETS["mnist"].to_dict().items() if k not in ("norm_eps", "downsample_pad")}
    assert UNetConfig.from_dict(old) == UNET_PRESETS["mnist"]
    assert (UNET_PRESETS["mnist"].norm_eps, UNET_PRESETS["mnist"].downsample_pad) == (1e-5, "symmetric")
    # the paper's network (tests/test_convert.py checks it against the reference)
    assert (UNET_PRESETS["ddpm-cifar10"].norm_eps, UNET_PRESETS["ddpm-cifar10"].downsample_pad) == (1e-6, "tf-same")


def test_config_dict_round_trip():
    c = UNET_PRESETS["mnist-text"]
    d = json.loads(json.dumps(c.to_dict()))
    assert isinstance(d["ch_mult"], list)
    assert UNetConfig.from_dict(d) == c
    with pytest.raises(ValueError, match=r"unknown UNetConfig field\(s\) \['bogus'\]"):
        UNetConfig.from_dict({**d, "bogus": 1})


# ---------------------------------------------------------------------------------------- overfit


def test_tiny_overfits_eight_mnist_images():
    from ddpm.diffusion import GaussianDiffusion
    from ddpm.schedules import make_betas

    with gzip.open(MNIST_TRAIN) as f:
        raw = f.read(16 + 8 * 28 * 28)  # IDX: 16-byte header, then uint8 pixels
    x0 = torch.from_numpy(np.frombuffer(raw, np.uint8, offset=16).reshape(8, 1, 28, 28).astype(np.float32))
    x0 = x0 / 127.5 - 1.0

    torch.manual_seed(0)
    model = UNet.from_preset("tiny")
    diffusion = GaussianDiffusion(make_betas("linear", 1000))
    # a fixed evaluation batch (every image at 8 timesteps), so the before/after losses are comparable
    t_eval = torch.randint(0, 1000, (64,))
    noise_eval = torch.randn(64, 1, 28, 28)

    def eval_loss() -> float:
        with torch.no_grad():
            return diffusion.training_loss(model, x0.repeat(8, 1, 1, 1), t=t_eval, noise=noise_eval).item()

    start = eval_loss()
    assert start == pytest.approx(1.0, abs=0.05)  # eps_theta = 0 at init
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(120):  # ~0.06 by then (start 1.0), for several seeds
        loss = diffusion.training_loss(model, x0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert eval_loss() < 0.15 * start


def test_the_shipped_model_loads_into_todays_network():
    """data/pretrained/mnist.pt was made by an earlier version of the code: its weights must still fit."""
    from pathlib import Path

    from ddpm.checkpoints import load_run

    path = Path(__file__).resolve().parent.parent / "data" / "pretrained" / "mnist.pt"
    run = load_run(path)
    assert sum(p.numel() for p in run.model.parameters()) == 1_114_209 and run.cond == "class"
