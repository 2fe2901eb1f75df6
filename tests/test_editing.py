"""Editing (ddpm/editing): SDEdit, RePaint and DDIM inversion against the samplers' Gaussian oracle, where the
right answer is known in closed form, and on the shipped models through the Editor and the command line."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_samplers import MU, SIGMA, GaussianOracle, _check_gaussian

from ddpm.checkpoints import load_run
from ddpm.datasets import load_dataset, to_float
from ddpm.diffusion import GaussianDiffusion
from ddpm.editing import (
    check_mask,
    ddim_invert,
    ddim_reconstruct,
    jump_schedule,
    named_mask,
    network_calls,
    read_mask,
    repaint,
    sdedit,
    slerp,
    strength_index,
    to_grid,
)
from ddpm.editing.runs import Editor
from ddpm.pipelines.base import Sampling
from ddpm.samplers import SAMPLERS, ancestral_sample_progressive, ddim_sample_progressive, sample
from ddpm.samplers.known import Known
from ddpm.schedules import make_betas

ROOT = Path(__file__).resolve().parent.parent
PRETRAINED = ROOT / "data" / "pretrained"


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion(make_betas("linear", 1000))


def data(n, seed=0):
    """n draws of the oracle's Gaussian data, as images [n, 1, 2, 2] (float64)."""
    g = torch.Generator().manual_seed(seed)
    return (MU + torch.randn(n, 4, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(SIGMA).T).view(n, 1, 2, 2)


class Counting:
    """A model that records the timesteps it is called at."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, x, t, cond=None):
        self.calls.append(int(t[0]))
        return self.model(x, t, cond)


# ---------------------------------------------------------------------------------------- a start point
def test_starting_at_t_start_continues_the_full_run_that_passes_there(diffusion):
    oracle, x_T = GaussianOracle(diffusion), torch.randn(6, 1, 2, 2, dtype=torch.float64)
    # DDIM (deterministic): the 38-step run (timesteps 27 apart: 999 = 27 x 37), and one started from its state at
    # index 540, 21 steps from the end; uniform spacing of 21 steps over 0..540 is the same timesteps
    steps = list(ddim_sample_progressive(oracle, diffusion, x_T.shape, steps=38, x_T=x_T, dtype=torch.float64))
    k = 17
    counting = Counting(oracle)
    rest = sample(counting, diffusion, x_T.shape, sampler="ddim", steps=38 - k, t_start=steps[k].t, x_T=steps[k].x_t,
                  dtype=torch.float64)
    assert steps[k].t == 540 and counting.calls == [s.t for s in steps[k:]]
    torch.testing.assert_close(rest, steps[-1].x_prev, rtol=0, atol=1e-12)
    # ancestral on all T steps, with the generator as it was at that point: the same draws, the same sample
    g = torch.Generator().manual_seed(3)
    states, full = {}, ancestral_sample_progressive(oracle, diffusion, x_T.shape, x_T=x_T, generator=g,
                                                     dtype=torch.float64)
    for step in full:
        if step.t == 400:
            states = {"x": step.x_prev.clone(), "rng": g.get_state()}
        last = step
    g2 = torch.Generator()
    g2.set_state(states["rng"])
    rest = sample(oracle, diffusion, x_T.shape, sampler="ancestral", t_start=399, x_T=states["x"], generator=g2,
                  dtype=torch.float64)
    # (the process below t_start is rebuilt from alpha_bar, so its betas agree to rounding, not to the bit)
    torch.testing.assert_close(rest, last.x_prev, rtol=0, atol=1e-10)


def test_strength_is_a_noise_level_and_one_is_plain_sampling(diffusion):
    assert [strength_index(s, 1000) for s in (0.001, 0.3, 0.6, 1.0)] == [0, 299, 599, 999]
    for bad in (0, -0.1, 1.01, float("nan")):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            strength_index(bad, 1000)
    oracle, x = GaussianOracle(diffusion), data(5).float()
    for sampler in SAMPLERS:
        plain = sample(oracle, diffusion, x.shape, sampler=sampler, steps=10,
                       generator=torch.Generator().manual_seed(1))
        edited = sdedit(oracle, diffusion, x, strength=1.0, sampler=sampler, steps=10,
                        generator=torch.Generator().manual_seed(1))
        assert torch.equal(plain, edited), sampler


def test_sdedit_runs_its_steps_below_t0_and_keeps_the_data_distribution(diffusion):
    oracle = GaussianOracle(diffusion)
    counting = Counting(oracle)
    sdedit(counting, diffusion, data(4).float(), strength=0.3, sampler="dpmpp-2m", steps=15)
    assert len(counting.calls) == 15 and max(counting.calls) == 299 and min(counting.calls) == 0
    counting.calls.clear()
    sdedit(counting, diffusion, data(4).float(), strength=0.005, sampler="ddim", steps=50)  # 5 timesteps below t_0
    assert sorted(counting.calls) == [0, 1, 2, 3, 4]
    # with the exact model, editing data keeps its distribution, and the output strays further as s grows
    x = data(2000)
    distance = []
    for s in (0.02, 0.05, 0.1, 0.2):  # (by s = 0.4 the output is independent of the input: these data are narrow)
        out = sdedit(oracle, diffusion, x, strength=s, sampler="ancestral",  # every step below t_0
                     generator=torch.Generator().manual_seed(2), threshold="none")
        _check_gaussian(out)
        distance.append(float((out - x).abs().mean()))
    assert distance == sorted(distance) and distance[0] < 0.4 * distance[-1], distance  # 0.07 ... 0.21


# ---------------------------------------------------------------------------------------- a known region
def test_the_schedule_of_jumps():
    assert jump_schedule(5, 2, 2) == [(4, 2), (2, 4), (4, 2), (2, 0), (0, 2), (2, 0)]
    assert jump_schedule(5, 2, 1) == [(4, 2), (2, 0)]
    assert network_calls(5, 2, 2) == 9 and network_calls(50, 10, 1) == 50 and network_calls(50, 5, 5) == 246
    with pytest.raises(ValueError, match="jump length"):
        jump_schedule(5, 0, 1)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_inpainting_keeps_the_known_pixels_exactly(diffusion, sampler):
    oracle, x = GaussianOracle(diffusion), data(3).float()
    mask = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).view(1, 1, 2, 2)
    for resample in (1, 3):
        out = repaint(oracle, diffusion, x, mask, sampler=sampler, steps=20, jump=4, resample=resample,
                      generator=torch.Generator().manual_seed(0))
        assert torch.equal(out[..., 0], x[..., 0]) and not torch.equal(out[..., 1], x[..., 1])


def test_one_resampling_is_naive_replacement(diffusion):
    oracle, x = GaussianOracle(diffusion), data(3).float()
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0]]).view(1, 1, 2, 2)
    naive = sample(oracle, diffusion, x.shape, sampler="ancestral", steps=30, known=Known(x, mask),
                   generator=torch.Generator().manual_seed(4))
    for jump in (1, 7):
        segmented = repaint(oracle, diffusion, x, mask, steps=30, jump=jump, resample=1,
                            generator=torch.Generator().manual_seed(4))
        torch.testing.assert_close(segmented, naive, rtol=0, atol=1e-5)


def test_resampling_draws_the_conditional_distribution_that_naive_replacement_misses(diffusion):
    """Keep x[0], x[1] of the correlated Gaussian at a value far from the mean: the right completion is the
    Gaussian conditional, mean mu_u + S_uk S_kk^-1 (x_k - mu_k). Naive replacement misses most of the shift
    (its drawn pixels never see the kept ones); RePaint's resampling gets close."""
    oracle = GaussianOracle(diffusion)
    n = 2000
    x_known = torch.tensor([0.6, -0.7], dtype=torch.float64)
    x = torch.cat([x_known, torch.zeros(2, dtype=torch.float64)]).repeat(n, 1).view(n, 1, 2, 2).float()
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0]]).view(1, 1, 2, 2)
    s_uk, s_kk = SIGMA[2:, :2], SIGMA[:2, :2]
    want = MU[2:] + s_uk @ torch.linalg.solve(s_kk, x_known - MU[:2])
    error = {}
    for resample in (1, 10):
        out = repaint(oracle, diffusion, x, mask, steps=100, jump=2, resample=resample,
                      generator=torch.Generator().manual_seed(0)).flatten(1).double()
        error[resample] = float((out[:, 2:].mean(0) - want).norm())
    shift = float((want - MU[2:]).norm())
    assert error[1] > 0.5 * shift and error[10] < 0.5 * error[1], (error, shift)  # measured: 0.27, 0.10 of 0.44


def test_masks():
    right = named_mask("right", 2, 28)
    assert right.shape == (2, 1, 28, 28) and right[..., :14].eq(1).all() and right[..., 14:].eq(0).all()
    center = named_mask("center", 1, 28)
    assert center[..., 7:21, 7:21].eq(0).all() and center.sum() == 28 * 28 - 14 * 14
    strokes = named_mask("random", 4, 28, torch.Generator().manual_seed(0))
    hidden = 1 - strokes.flatten(1).mean(1)
    assert (hidden > 0.05).all() and (hidden < 0.6).all() and not torch.equal(strokes[0], strokes[1])
    with pytest.raises(ValueError, match="mask"):
        named_mask("middle", 1, 28)
    grid = to_grid(named_mask("right", 1, 28), 7)  # a 7x7 cell is kept only if all its 4x4 pixels are
    assert grid.shape == (1, 1, 7, 7) and grid[..., :3].eq(1).all() and grid[..., 3:].eq(0).all()
    odd = torch.ones(1, 1, 28, 28)
    odd[..., 5, 5] = 0
    assert to_grid(odd, 7)[0, 0, 1, 1] == 0 and to_grid(odd, 7).sum() == 48
    for everything in (torch.ones(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)):
        with pytest.raises(ValueError, match="keeps"):
            check_mask(everything)
    with pytest.raises(ValueError, match="only 0"):
        Known(torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 0.5))


def test_a_mask_file(tmp_path):
    from PIL import Image

    pixels = np.zeros((28, 28), dtype=np.uint8)
    pixels[:, 14:] = 255
    Image.fromarray(pixels).save(tmp_path / "m.png")
    assert torch.equal(read_mask(tmp_path / "m.png", 28), named_mask("right", 1, 28))
    with pytest.raises(ValueError, match="28x28"):
        read_mask(tmp_path / "m.png", 32)
    pixels[:, :3] = 128
    Image.fromarray(pixels).save(tmp_path / "grey.png")
    with pytest.raises(ValueError, match="not binary"):
        read_mask(tmp_path / "grey.png", 28)


# ---------------------------------------------------------------------------------------- inversion
def test_inversion_reconstructs_ever_better_as_the_steps_grow(diffusion):
    oracle, x = GaussianOracle(diffusion), data(200).float()
    error = []
    for steps in (10, 20, 50, 100):
        x_T = ddim_invert(oracle, diffusion, x, steps=steps, threshold="none")
        back = ddim_reconstruct(oracle, diffusion, x_T, steps=steps, threshold="none")
        error.append(float((back - x).abs().max()))
    # first order: each doubling of the steps about halves the error (measured 0.45, 0.28, 0.13, 0.07)
    assert all(b < 0.7 * a for a, b in zip(error, error[1:], strict=False)), error
    # the ODE maps the data distribution to N(0, I): the inverted noise's variance goes to 1 as the steps grow
    # (measured: 0.69-0.82 at 50 steps, 0.91-0.97 at 200, 0.98-1.01 at 1000)
    variance = {}
    for steps in (50, 1000):
        z = ddim_invert(oracle, diffusion, data(2000).float(), steps=steps, threshold="none").flatten(1).double()
        variance[steps] = torch.cov(z.T).diag()
    assert (variance[50] < 0.9).all() and ((variance[1000] - 1).abs() < 0.05).all(), variance



def test_guidance_breaks_inversion(diffusion):
    """Class 0 is the Gaussian at +mu, class 1 at -mu, the null condition their mixture's moment match (the zero
    mean Gaussian of the mixture's covariance). Inverted and decoded under class 0 with the same guidance, the
    digits come back the less exactly the stronger the guidance: the guided eps is no single model's."""
    oracles = {0: GaussianOracle(diffusion, MU, SIGMA), 1: GaussianOracle(diffusion, -MU, SIGMA)}
    null = GaussianOracle(diffusion, 0 * MU, SIGMA + torch.outer(MU, MU))

    def model(x, t, cond=None):
        if cond is None or bool((cond == -1).all()):
            return null(x, t)
        out = torch.empty_like(x)
        for label, oracle in oracles.items():
            rows = cond == label
            if rows.any():
                out[rows] = oracle(x[rows], t[rows])
        return out

    x, cond = data(200).float(), torch.zeros(200, dtype=torch.long)
    error = {}
    for s in (1.0, 3.0, 7.0):
        x_T = ddim_invert(model, diffusion, x, cond, steps=50, guidance_scale=s, threshold="none")
        back = ddim_reconstruct(model, diffusion, x_T, cond, steps=50, guidance_scale=s, threshold="none")
        error[s] = float((back - x).abs().mean())
    assert error[1.0] < error[3.0] < error[7.0] and error[7.0] > 2 * error[1.0], error


def test_slerp():
    a, b = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-5) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-5)
    e1, e2 = torch.zeros(1, 2), torch.zeros(1, 2)
    e1[0, 0], e2[0, 1] = 2.0, 2.0
    mid = slerp(e1, e2, 0.5)
    assert torch.allclose(mid.norm(), torch.tensor(2.0)) and torch.allclose(mid[0, 0], mid[0, 1])


# ---------------------------------------------------------------------------------------- the shipped models
def test_a_latent_model_edits_in_latent_space():
    run = load_run(PRETRAINED / "mnist-latent-class-600.pt")
    seen = []
    network = run.model
    run.model = lambda x, t, c: (seen.append(tuple(x.shape[1:])), network(x, t, c))[1]
    editor = Editor(run, Sampling("ancestral", 10, 1.0))
    images = to_float(load_dataset("mnist", "test").images[:2])
    mask = named_mask("right", 2, 28)
    out = editor.inpaint(images, mask, torch.tensor([7, 2]), jump=3, resample=2,
                         generator=torch.Generator().manual_seed(0))
    assert set(seen) == {(4, 7, 7)} and out.shape == images.shape
    assert torch.equal(out[..., :14], images[..., :14]) and not torch.equal(out[..., 14:], images[..., 14:])
    edited = editor.sdedit(images, torch.tensor([1, 1]), 0.5, torch.Generator().manual_seed(0))
    assert edited.shape == images.shape and edited.min() >= -1 and edited.max() <= 1


def test_the_editor_refuses_what_draws_no_images():
    with pytest.raises(ValueError, match="cannot edit"):
        Editor(load_run(PRETRAINED / "mnist-prior.pt"), Sampling())


class Result:
    def __init__(self, code, out, err):
        self.returncode, self.stdout, self.stderr = code, out, err


def _edit(tmp_path, *args, command="edit"):
    """python -m ddpm edit ARGS, run in this process (ddpm.cli.main) in tmp_path."""
    import contextlib
    import io
    import os

    from ddpm.cli import main

    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(tmp_path)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([command, *args])
            except SystemExit as e:  # argparse's errors
                code = e.code
    finally:
        os.chdir(here)
    return Result(code, out.getvalue(), err.getvalue())


def test_the_command(tmp_path):
    r = _edit(tmp_path, "--from-test", "3,4", "--class", "8", "--strength", "0.6", "--steps", "5", "--out", "sd.png")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "sd.png").exists() and (tmp_path / "sd.panel.png").exists()
    record = json.loads((tmp_path / "sd.png.json").read_text())
    assert record["mode"] == "sdedit" and record["strength"] == 0.6 and record["class"] == "8"
    r = _edit(tmp_path, "--from-test", "3", "--mask", "right", "--steps", "10", "--jump", "3", "--resample", "2",
              "--out", "ip.npz")
    assert r.returncode == 0, r.stderr
    arrays = np.load(tmp_path / "ip.npz")
    assert arrays["inputs"].dtype == np.uint8 and arrays["results"].shape == (1, 1, 28, 28)
    assert (arrays["results"][..., :14] == arrays["inputs"][..., :14]).all() and arrays["masks"][..., 14:].max() == 0
    r = _edit(tmp_path, "--n", "3", "--class", "4", "--steps", "2", "--out", "s.npz", command="sample")
    assert r.returncode == 0, r.stderr  # sample writes .npz too
    arrays = np.load(tmp_path / "s.npz")
    assert arrays["images"].shape == (3, 1, 28, 28) and arrays["labels"].tolist() == [4, 4, 4]
    r = _edit(tmp_path, "--from-test", "5", "--invert", "--steps", "20", "--out", "inv.png")
    assert r.returncode == 0 and "PSNR" in r.stdout, r.stderr
    assert min(json.loads((tmp_path / "inv.png.json").read_text())["psnr_db"]) > 25


def test_a_target_alone_means_sdedit_at_the_default_strength(tmp_path):
    """`edit --image my_digit.png --prompt "a thick seven"` (the issue's command): SDEdit at strength 0.6."""
    r = _edit(tmp_path, "--from-test", "3", "--class", "8", "--steps", "3", "--out", "e.png")
    assert r.returncode == 0 and "strength 0.6" in r.stdout, r.stderr
    assert json.loads((tmp_path / "e.png.json").read_text())["strength"] == 0.6


@pytest.mark.parametrize("args, message", [
    (["--from-test", "3"], "say how to edit"),
    (["--from-test", "3", "--strength", "0.5", "--mask", "right"], "do not combine"),
    (["--from-test", "3", "--strength", "0.5", "--invert"], "do not combine"),
    (["--from-test", "3", "--strength", "1.5"], "in (0, 1]"),
    (["--from-test", "3", "--strength", "0.5", "--jump", "3"], "--jump is for --mask"),
    (["--strength", "0.5"], "give the images"),
    (["--from-test", "99999", "--strength", "0.5"], "test set has images"),
    (["--image", "nothing.png", "--strength", "0.5"], "no such file"),
    (["--image", "bad.png", "--strength", "0.5"], "cannot read"),
    (["--from-test", "3", "--mask", "middle"], "neither a mask name"),
    (["--from-test", "3", "--mask", "big.png"], "of the images' size"),
    (["--from-test", "3", "--mask", "keep.png"], "keeps every pixel"),
    (["--from-test", "3", "--strength", "0.5", "--out", "x.jpg"], "unknown file extension"),
    (["--from-test", "3", "--strength", "0.5", "--run", "../data/pretrained/mnist-prior.pt"], ""),
])
def test_the_command_says_what_is_wrong_in_one_line(tmp_path, args, message):
    from PIL import Image

    (tmp_path / "bad.png").write_bytes(b"not an image")
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(tmp_path / "big.png")
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(tmp_path / "keep.png")
    r = _edit(tmp_path, *[a.replace("../data", str(ROOT / "data")) for a in args])
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert message in r.stderr, r.stderr
