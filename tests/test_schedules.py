"""Golden values of ../shared/docs/REFERENCE.md and the invariants of every schedule."""

import math

import pytest
import torch

from ddpm.schedules import SCHEDULES, alpha_bar, log_snr, make_betas, rescale_zero_terminal_snr, snr


def test_linear_golden_values():
    betas = make_betas("linear", 1000)
    abar = alpha_bar(betas)
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    # paper t = 1, 10, 100, 250, 500, 750 -> code index t - 1
    expected = {1: 0.999900, 10: 0.998105, 100: 0.897018, 250: 0.524085, 500: 0.0785872, 750: 0.00335055}
    for paper_t, value in expected.items():
        assert abar[paper_t - 1].item() == pytest.approx(value, rel=2e-6)
    assert abar[-1].item() == pytest.approx(4.03583e-05, rel=1e-5)
    assert abar[-1].sqrt().item() == pytest.approx(0.00635282, rel=1e-5)
    assert log_snr(abar)[-1].item() == pytest.approx(-10.1177, abs=1e-4)
    assert betas.sum().item() == pytest.approx(10.05, rel=1e-12)


def test_cosine_golden_values():
    betas = make_betas("cosine", 1000)
    abar = alpha_bar(betas)
    expected = {1: 0.999959, 250: 0.847012, 500: 0.493844, 750: 0.144272, 999: 2.42877e-06}
    for paper_t, value in expected.items():
        assert abar[paper_t - 1].item() == pytest.approx(value, rel=2e-6)
    assert betas[0].item() == pytest.approx(4.12842e-05, rel=1e-5)
    # only the last beta is clipped (1.0 -> 0.999)
    assert (betas == 0.999).sum().item() == 1 and betas[-1].item() == 0.999
    assert (betas[:-1] < 0.999).all()
    assert abar[-1].item() == pytest.approx(2.42877e-09, rel=1e-5)


def test_linear_rescales_for_other_T():
    # the 1000/T rescale keeps the total noise comparable; without it T=300 keeps ~0.2 of the signal
    for T in (100, 300, 4000):
        abar_T = alpha_bar(make_betas("linear", T))[-1].item()
        assert abar_T < 1e-3, T
    unscaled = alpha_bar(make_betas("linear", 300, beta_start=1e-4, beta_end=0.02))[-1].sqrt().item()
    assert 0.13 < unscaled < 0.22  # the classic pitfall REFERENCE.md describes


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_every_schedule_is_a_valid_diffusion(name):
    betas = make_betas(name, 1000)
    abar = alpha_bar(betas)
    assert betas.dtype == torch.float64
    assert (betas > 0).all() and (betas < 1).all()
    assert (abar[1:] < abar[:-1]).all()  # strictly losing signal
    assert abar[-1] < 1e-3  # x_T is (almost) pure noise
    assert abar[0] > 0.999  # the first step is tiny


def test_quadratic_is_not_the_endpoint_squared_typo():
    betas = make_betas("quadratic", 1000)
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    assert betas[500].item() == pytest.approx((math.sqrt(1e-4) + (math.sqrt(0.02) - math.sqrt(1e-4)) * 500 / 999) ** 2)


def test_zero_terminal_snr():
    betas = make_betas("linear", 1000)
    rescaled = rescale_zero_terminal_snr(betas)
    abar, abar0 = alpha_bar(rescaled), alpha_bar(betas)
    assert abar[-1].item() == pytest.approx(0.0, abs=1e-20)
    assert abar[0].item() == pytest.approx(abar0[0].item(), rel=1e-12)
    assert rescaled[-1].item() == pytest.approx(1.0)
    assert torch.equal(make_betas("linear", 1000, zero_terminal_snr=True), rescaled)


def test_snr_helpers():
    abar = alpha_bar(make_betas("cosine", 1000))
    assert torch.allclose(torch.log(snr(abar)), log_snr(abar))
    assert (log_snr(abar)[1:] < log_snr(abar)[:-1]).all()


def test_unknown_schedule_lists_the_known_ones():
    with pytest.raises(ValueError, match="linear, cosine, quadratic, sigmoid"):
        make_betas("cosinus", 1000)
    with pytest.raises(ValueError, match="T must be"):
        make_betas("linear", 1)
    with pytest.raises(ValueError, match="needs T > 20"):
        make_betas("linear", 20)  # beta_T would be exactly 1: nothing of x0 left at all
