"""Pictures: every viz function draws the axes it promises and writes a non-empty file; the forward
trajectory really ends in N(0, I); the visualize command writes files and fails in one line."""

import argparse
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure

from ddpm import viz
from ddpm.cli import visualize
from ddpm.cli.common import UsageError
from ddpm.datasets import class_prompts, load_dataset, to_float, toy2d
from ddpm.diffusion import GaussianDiffusion
from ddpm.nn.mlp import MLP
from ddpm.nn.unet import UNet
from ddpm.presets import get_preset
from ddpm.samplers import Step, ancestral_sample
from ddpm.schedules import make_betas
from ddpm.training import Trainer


@pytest.fixture(scope="module")
def digits():
    return load_dataset("mnist", split="test").images[:64]  # uint8 [64, 1, 28, 28]


@pytest.fixture(scope="module")
def linear():
    return GaussianDiffusion(make_betas("linear", 1000))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def written(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000


# ---------------------------------------------------------------------------------------------- the numbers
@pytest.mark.parametrize("method", ["chain", "closed"])
def test_forward_trajectory_ends_in_standard_normal(linear, digits, method):
    traj = viz.forward_trajectory(linear, digits, [0, 99, 999], method, gen())
    assert traj.shape == (3, 64, 1, 28, 28)
    x_T = traj[-1]
    assert abs(float(x_T.mean())) < 0.03 and abs(float(x_T.std()) - 1) < 0.03
    # after one step (paper t = 1, beta = 1e-4) the digits are still there
    x1 = traj[0]
    assert float((x1 - to_float(digits)).abs().max()) < 0.1


def test_forward_chain_and_closed_form_agree_in_distribution(linear):
    x0 = torch.full((4000, 1), 0.8)
    t = 299
    abar = float(linear.alpha_bar[t])
    for method in ("chain", "closed"):
        x = viz.forward_trajectory(linear, x0, [t], method, gen(1))[0]
        assert abs(float(x.mean()) - abar**0.5 * 0.8) < 0.05
        assert abs(float(x.std()) - (1 - abar) ** 0.5) < 0.05


def test_forward_trajectory_rejects_bad_input(linear, digits):
    with pytest.raises(ValueError, match="0..999"):
        viz.forward_trajectory(linear, digits, [1000])
    with pytest.raises(ValueError, match="method"):
        viz.forward_trajectory(linear, digits, [5], method="euler")
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        viz.make_grid(torch.zeros(28, 28))


def test_default_timesteps_are_paper_times():
    assert viz.default_timesteps(1000, (0.1, 1.0)) == [99, 999]  # paper t = 100 and 1000
    assert viz.default_timesteps(10, (0.0, 0.01)) == [0]


def test_make_grid_layout():
    grid = viz.make_grid(torch.zeros(10, 1, 28, 28), nrow=4, pad=2)
    assert grid.shape == (3 * 30 + 2, 4 * 30 + 2, 1) and grid.dtype.name == "uint8"
    assert grid[0, 0, 0] == 255 and grid[2, 2, 0] == 128  # white padding; 0.0 -> mid gray


def test_reverse_trajectory_is_a_list_of_steps():
    torch.manual_seed(0)
    model = UNet.from_preset("tiny").eval()
    d = GaussianDiffusion(make_betas("linear", 50))
    steps = viz.reverse_trajectory(model, d, (2, 1, 28, 28), steps=10, frames=4, generator=gen())
    # respaced steps: indices 49, 44, 38, 33, 27, 22, 16, 11, 5, 0; every third is kept, from x_T down
    assert [s.t for s in steps] == [49, 33, 16, 0, -1]  # original index of x_t, then the finished sample
    assert all(isinstance(s, Step) and s.x_t.shape == s.pred_x0.shape == s.x_prev.shape == (2, 1, 28, 28)
               for s in steps)
    assert steps[-1].t == -1 and all(torch.equal(x, steps[-2].x_prev) for x in steps[-1][1:])  # x_0 as a Step
    assert float(steps[1].pred_x0.abs().max()) <= 1.0  # clipped prediction
    x0 = ancestral_sample(model, d, (2, 1, 28, 28), steps=10, generator=gen())
    assert torch.equal(steps[-1].x_t, x0)  # the same samples as without keeping the trajectory
    every = viz.reverse_trajectory(model, d, (2, 1, 28, 28), sampler="ddim", steps=5, frames=None,
                                   generator=gen())
    assert [s.t for s in every] == [49, 37, 24, 12, 0, -1]
    assert all(torch.equal(a.x_prev, b.x_t) for a, b in zip(every, every[1:], strict=False))
    assert viz.Frame is Step  # the old name still imports
    with pytest.raises(ValueError, match="sampler"):
        viz.reverse_trajectory(model, d, (2, 1, 28, 28), sampler="euler")


def test_loss_profile_of_an_untrained_unet_is_one():
    model = UNet.from_preset("tiny")  # zero-initialized output layer: eps_theta = 0, so the loss is E[eps^2]
    d = GaussianDiffusion(make_betas("linear", 100))
    ts, losses = viz.loss_profile(model, d, torch.zeros(8, 1, 28, 28), n_ts=10, generator=gen())
    assert ts[0] == 0 and ts[-1] == 99 and losses.shape == (len(ts), 8)
    assert abs(float(losses.mean()) - 1) < 0.05
    assert model.training  # the mode is restored


# ---------------------------------------------------------------------------------------------- the figures
def test_image_figures(linear, digits, tmp_path):
    fig = viz.plot_forward_trajectory(linear, digits[:3], generator=gen())
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels[0].startswith("x_0") and labels[-1].startswith("t = 1000") and len(labels) == 9
    fig = viz.plot_image_table(torch.zeros(2, 3, 1, 8, 8), ["a", "b"], ["1", "2", "3"], "table")
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["a", "b"]
    with pytest.raises(ValueError, match="column labels"):
        viz.plot_image_table(torch.zeros(2, 3, 1, 8, 8), None, ["1"])
    paths = [
        viz.plot_images(digits[:16], title="digits", path=tmp_path / "images.png"),
        viz.plot_forward_trajectory(linear, digits[:3], method="closed", path=tmp_path / "forward.png"),
        viz.plot_pixel_histogram(linear, digits, generator=gen(), path=tmp_path / "hist.png"),
        viz.plot_small_T_pitfall(300, digits[:3], generator=gen(), path=tmp_path / "pitfall.png"),
        viz.save_grid(digits[:8], tmp_path / "grid.png"),
    ]
    assert all(isinstance(p, Path) and written(p) for p in paths)


def test_schedule_and_network_figures(tmp_path):
    fig = viz.plot_schedules(T=200)
    assert len(fig.axes) == 4 and all(len(ax.get_lines()) >= 4 for ax in fig.axes)
    assert "log-SNR" in fig.axes[3].get_title()
    fig = viz.plot_small_T_pitfall(300)
    assert len(fig.axes) == 1 and len(fig.axes[0].get_lines()) == 3
    fig = viz.plot_timestep_embedding(dim=32, T=100)
    assert len([ax for ax in fig.axes if ax.get_label() != "<colorbar>"]) == 3
    model = UNet.from_preset("tiny")
    shapes = viz.trace_shapes(model, torch.zeros(1, 1, 28, 28), torch.tensor([3]))
    assert shapes[0] == ("conv_in", (1, 8, 28, 28)) and shapes[-1] == ("conv_out", (1, 1, 28, 28))
    assert any(name.startswith("mid") and shape[-1] == 14 for name, shape in shapes)
    d = GaussianDiffusion(make_betas("linear", 100))
    paths = [
        viz.plot_schedules(T=100, path=tmp_path / "schedules.png"),
        viz.plot_chain_vs_closed_form(d, n=200, generator=gen(), path=tmp_path / "chain.png"),
        viz.plot_timestep_embedding(32, 100, path=tmp_path / "emb.png"),
        viz.plot_unet_shapes(shapes, path=tmp_path / "unet.png"),
    ]
    assert all(written(p) for p in paths)


def test_reverse_loss_and_bound_figures(tmp_path):
    model = UNet.from_preset("tiny").eval()
    d = GaussianDiffusion(make_betas("linear", 25))
    steps = viz.reverse_trajectory(model, d, (3, 1, 28, 28), frames=5, generator=gen())
    fig = viz.plot_reverse_trajectory(steps, n_images=2)
    cols = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert len(fig.axes[0].get_yticklabels()) == 4 and len(cols) == len(steps) == 6
    assert cols[0] == "t = 25" and cols[-2] == "t = 1" and cols[-1] == "x_0\n(sample)"  # the paper's t
    gif = viz.save_reverse_animation(steps, tmp_path / "rev.gif", show_pred_x0=True)
    assert gif.read_bytes()[:4] == b"GIF8"
    ts, losses = viz.loss_profile(model, d, torch.zeros(2, 1, 28, 28), n_ts=5, generator=gen())
    result = {"terms": torch.rand(2, 25) + 0.01, "prior": torch.full((2,), 1e-5), "total": torch.rand(2)}
    paths = [
        viz.plot_reverse_trajectory(steps, path=tmp_path / "reverse.png"),
        viz.save_reverse_animation(steps[:3], tmp_path / "rev2.gif", nrow=2),
        viz.plot_loss_profile(ts, losses, path=tmp_path / "profile.png"),
        viz.plot_vlb_terms(result, path=tmp_path / "vlb.png"),
    ]
    assert all(written(p) for p in paths)
    assert len(viz.plot_vlb_terms(result).axes) == 2


def test_training_log_figures(tmp_path):
    (tmp_path / "log.csv").write_text("step,loss,lr,grad_norm,images_per_s,elapsed_s\n"
                                      + "".join(f"{s},{1 / s},0.001,1.0,10,{s}\n" for s in range(1, 30)))
    (tmp_path / "loss_by_t.csv").write_text("step,t0-50%,t50-100%\n1,0.9,\n2,0.8,0.1\n")
    assert written(viz.plot_loss_curve(tmp_path / "log.csv", tmp_path / "loss.png"))
    assert isinstance(viz.plot_loss_curve(tmp_path / "log.csv"), Figure)
    fig = viz.plot_loss_by_t(tmp_path / "loss_by_t.csv")
    assert len(fig.axes[0].get_lines()) == 2
    assert written(viz.plot_loss_by_t(tmp_path / "loss_by_t.csv", tmp_path / "by_t.png"))


def _smoothed(fig: Figure):
    raw, smooth = fig.axes[0].get_lines()[:2]
    return raw.get_ydata(), smooth.get_ydata()


def test_smoothed_loss_keeps_up_with_a_short_log(tmp_path):
    """A short log of a falling loss (80 steps in warmup): the smoothed curve ends near the last raw values,
    not at a mean of the whole log (the smoothing window grows with the number of points)."""
    noise = 1 + 0.1 * torch.randn(16, generator=gen()).numpy()
    loss = [(0.05 + 0.95 * 0.7 ** (5 * k / 8)) * noise[k] for k in range(16)]  # 1.0 -> about 0.05
    (tmp_path / "log.csv").write_text("step,loss\n" + "".join(f"{5 * (k + 1)},{v}\n" for k, v in enumerate(loss)))
    raw, smooth = _smoothed(viz.plot_loss_curve(tmp_path / "log.csv"))
    assert abs(smooth[-1] - raw[-3:].mean()) < 0.2 * raw[-3:].mean()
    assert smooth[0] == pytest.approx(raw[0])  # bias-corrected from the first point
    # a long noisy log is still smoothed: the smoothed curve varies much less than the raw one
    flat = 0.1 * (1 + 0.3 * torch.randn(2000, generator=gen(1)).numpy())
    (tmp_path / "long.csv").write_text("step,loss\n" + "".join(f"{k + 1},{v}\n" for k, v in enumerate(flat)))
    raw, smooth = _smoothed(viz.plot_loss_curve(tmp_path / "long.csv"))
    assert smooth[100:].std() < raw.std() / 5


def test_toy_figures(tmp_path):
    torch.manual_seed(0)
    model = MLP().eval()
    d = GaussianDiffusion(make_betas("linear", 30))
    points = toy2d("moons", 300)
    steps = viz.reverse_trajectory(model, d, (50, 2), frames=None, generator=gen(), threshold="none")
    assert len(steps) == 31 and steps[0].t == 29 and steps[-1].t == -1
    fig = viz.plot_score_field(model, d, ts=[0, 29], data=points, grid=7)
    assert len(fig.axes) == 2 and "t = 30" in fig.axes[1].get_title()
    paths = [
        viz.plot_points({"moons": points, "again": points}, path=tmp_path / "points.png"),
        viz.plot_points(points, title="moons", path=tmp_path / "one.png"),
        viz.plot_toy_forward(d, points, generator=gen(), path=tmp_path / "forward.png"),
        viz.plot_toy_reverse(steps, points, path=tmp_path / "reverse.png"),
        viz.plot_score_field(model, d, data=points, grid=9, path=tmp_path / "score.png"),
    ]
    assert all(written(p) for p in paths)


# ---------------------------------------------------------------------------------------------- the command
def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="visualize")
    visualize.add_arguments(p)
    return p.parse_args(argv)


def test_command_writes_schedule_figure(tmp_path, capsys):
    assert parse(["schedules"]).device == "auto"  # like every other command
    assert visualize.run(parse(["schedules", "--out-dir", str(tmp_path / "figs")])) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "figs" / "schedules_T1000.png")
    assert written(tmp_path / "figs" / "schedules_T1000.png")


@pytest.mark.parametrize("argv, message", [
    (["forward", "--n", "0"], "expected a positive integer, got 0"),
    (["pitfall", "--T", "-3"], "expected a positive integer, got -3"),
    (["reverse", "--sampler", "euler"], "invalid choice: 'euler'"),
    (["toy", "--toy", "spiral"], "invalid choice: 'spiral'"),
])
def test_command_rejects_bad_flags_when_parsing(capsys, argv, message):
    with pytest.raises(SystemExit):
        parse(argv)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, error, message", [
    (["forward", "--schedule", "nope"], ValueError, "unknown beta schedule 'nope'; known schedules: linear"),
    (["pitfall", "--T", "1"], ValueError, "T must be an integer >= 2"),
    (["reverse", "--run", "no/such/run"], ValueError, "no checkpoint at"),
    (["forward", "--out-dir", "{file}"], UsageError, "is a file, not a folder"),
    (["schedules", "--out-dir", "{file}/figs"], UsageError, "is a file, not a folder"),
])
def test_command_bad_input_is_one_line(tmp_path, argv, error, message):
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "out"
    args = parse(["--out-dir", str(out)] + [a.format(file=tmp_path / "file") for a in argv])
    with pytest.raises(error, match=message) as e:
        visualize.run(args)
    assert "\n" not in str(e.value) and not out.exists()  # one line, and nothing written


def test_command_figures_from_a_run(tmp_path, capsys):
    """forward, reverse and loss-profile from a (barely) trained tiny run; toy trains its own MLP."""
    run = tmp_path / "run"
    Trainer(get_preset("tiny", steps=2, batch_size=8, sample_steps=2), run, device="cpu", progress=False).fit()
    capsys.readouterr()
    out = tmp_path / "figs"
    common = ["--out-dir", str(out), "--n", "2", "--device", "cpu"]
    assert visualize.run(parse(["forward", "--schedule", "cosine", "--T", "100", *common])) == 0
    assert visualize.run(parse(["reverse", "--run", str(run), "--steps", "4", "--class", "3", *common])) == 0
    assert visualize.run(parse(["loss-profile", "--run", str(run), *common])) == 0
    assert visualize.run(parse(["toy", "--steps", "20", "--toy", "moons", "--n", "200", "--out-dir", str(out)])) == 0
    printed = capsys.readouterr().out.split()
    names = ["forward_cosine_T100.png", "reverse_ddim4.png", "reverse_ddim4.gif", "loss_profile.png",
             "toy_forward_moons.png", "toy_reverse_moons.png", "toy_score_moons.png"]
    assert [Path(p).name for p in printed] == names
    assert all(written(out / n) for n in names)
    assert visualize.run(parse(["unet", "--run", str(run), "--out-dir", str(out)])) == 0
    assert written(out / "unet_tiny.png")
    with pytest.raises(UsageError, match="is an image model; toy needs a toy2d run"):
        visualize.run(parse(["toy", "--run", str(run), "--out-dir", str(out)]))


def test_loss_profile_of_a_text_model_is_the_same_for_two_seeds(tmp_path, monkeypatch, capsys):
    """The text condition is each label's canonical prompt, not captions drawn with --seed: with the same noise,
    two seeds give the same loss profile."""
    run = tmp_path / "txt"
    Trainer(get_preset("tiny", steps=2, ckpt_every=0, cond="text"), run, device="cpu", progress=False).fit(
        final_samples=False)
    seen = []
    loss_profile = viz.loss_profile

    def same_noise(model, diffusion, x0, cond=None, **kwargs):
        kwargs["generator"] = gen(0)  # only the condition could differ between the seeds
        ts, losses = loss_profile(model, diffusion, x0, cond, n_ts=8, **kwargs)
        seen.append((cond, losses))
        return ts, losses

    monkeypatch.setattr(viz, "loss_profile", same_noise)
    for seed in ("0", "1"):
        args = parse(["loss-profile", "--run", str(run), "--n", "6", "--seed", seed, "--device", "cpu",
                      "--out-dir", str(tmp_path / f"seed{seed}")])
        assert visualize.run(args) == 0
    data = load_dataset("mnist", split="test")
    prompts = class_prompts(data.label_names, data.labels[:6], "mnist")
    assert seen[0][0] == seen[1][0] == prompts
    assert torch.equal(seen[0][1], seen[1][1])
