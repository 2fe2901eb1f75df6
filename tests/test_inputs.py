"""Bad or unusual user input (issue 26's robustness probe): each ends as one line on stderr and exit code 2, or is
read correctly, never a traceback or a silently wrong result.

    images     16-bit grayscale, drawings in the alpha channel, decompression bombs (ddpm.datasets.read_image, used
               by unclip --variations and image folders alike); a non-ASCII digit string for --variations
    visualize  unet on a run without a U-Net names what the run is and what to give instead
    bench      unCLIP's decoder is benchmarked with embedding conditions
    flags      flags a command does not take are refused by argparse
"""

from __future__ import annotations

import io
import json
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.bench.knobs import _null_like
from ddpm.bench.runs import _condition
from ddpm.cli import main
from ddpm.cli.common import UsageError
from ddpm.datasets import MAX_IMAGE_PIXELS, DatasetError, load_image_folder, read_image
from ddpm.pipelines.unclip.cli import read_digit
from ddpm.presets import get_preset

DECODER = "data/pretrained/mnist-decoder.pt"
STROKE = (slice(4, 24), slice(12, 16))  # a vertical bar: the strokes of the drawings below


def _one_line_error(argv, capsys) -> str:
    """Run the command; assert it failed with exit code 2 and one line on stderr; return that line."""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse: a flag the command does not take
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


def _assert_light_strokes_on_dark(x: torch.Tensor) -> None:
    assert x.shape == (1, 1, 28, 28)
    stroke = torch.zeros(28, 28, dtype=torch.bool)
    stroke[STROKE] = True
    assert (x[0, 0][stroke] > 0.9).all() and (x[0, 0][~stroke] < -0.9).all()


# ---------------------------------------------------------------------------------------------- 16-bit images
def _gray16(path, mode: str = "I;16"):
    """A 16-bit drawing: the bar at 65535, a half-gray bar beside it (32768), the ground 0."""
    a = np.zeros((28, 28), dtype=np.uint16)
    a[STROKE] = 65535
    a[4:24, 16:18] = 32768
    image = Image.fromarray(a) if mode == "I;16" else Image.fromarray(a.astype(np.int32))
    assert image.mode == mode
    image.save(path)
    return path


@pytest.mark.parametrize("name, mode", [("g16.png", "I;16"), ("g32.tif", "I")])
def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path, name, mode):
    path = _gray16(tmp_path / name, mode)
    assert Image.open(path).mode == mode
    gray = np.asarray(read_image(path, channels=1))
    assert gray[10, 13] == 255 and gray[10, 16] == 128 and gray[0, 0] == 0  # convert("L") gave 255 for 32768
    x = read_digit(str(path))
    assert x[0, 0, 10, 13] == 1.0 and abs(float(x[0, 0, 10, 16])) < 0.01 and x[0, 0, 0, 0] == -1.0


def test_16_bit_digit_through_the_command(tmp_path, capsys):
    path = _gray16(tmp_path / "g16.png")
    assert main(["unclip", "--variations", str(path), "--decoder", DECODER, "--n", "1", "--decoder-steps", "1",
                 "--out", str(tmp_path / "v.png")]) == 0
    assert "g16.png" in capsys.readouterr().out


def test_a_float_image_outside_0_1_is_refused(tmp_path):
    Image.fromarray(np.full((8, 8), 300.0, dtype=np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(DatasetError, match="values from 300 to 300"):
        read_image(tmp_path / "f.tif")


# ---------------------------------------------------------------------------------------------- transparency
def _alpha_drawing(path, color: int, mode: str = "RGBA"):
    """Strokes of one colour drawn only in the alpha channel: opaque on a fully transparent ground whose colour is
    black (what most drawing programs store), so the colour alone shows nothing of a black drawing."""
    a = np.zeros((28, 28, 4), dtype=np.uint8)
    a[STROKE] = (color, color, color, 255)
    image = Image.fromarray(a)
    (image.convert(mode) if mode != "RGBA" else image).save(path)
    return path


@pytest.mark.parametrize("color, mode", [(0, "RGBA"), (255, "RGBA"), (0, "LA"), (255, "LA")])
def test_a_drawing_in_the_alpha_channel_keeps_its_strokes(tmp_path, color, mode):
    path = _alpha_drawing(tmp_path / "drawn.png", color, mode)
    assert Image.open(path).mode == mode
    _assert_light_strokes_on_dark(read_digit(str(path)))


def test_a_palette_image_with_a_transparent_colour(tmp_path):
    image = Image.new("P", (28, 28), 0)
    image.putpalette([0, 0, 0, 0, 0, 0] + [0] * 762)  # two black entries: 0 the transparent ground, 1 the ink
    image.paste(1, (12, 4, 16, 24))
    image.info["transparency"] = 0
    image.save(tmp_path / "p.png", transparency=0)
    _assert_light_strokes_on_dark(read_digit(str(tmp_path / "p.png")))


def test_an_image_folder_reads_transparent_and_16_bit_images_the_same_way(tmp_path):
    _alpha_drawing(tmp_path / "a.png", 255)
    _gray16(tmp_path / "b.png")
    ds = load_image_folder(tmp_path, image_size=28, channels=1)
    for image in ds.images:  # white strokes on black: over white they would vanish
        assert image[0][STROKE].min() == 255 and image[0, 0, 0] == 0


# ---------------------------------------------------------------------------------------------- decompression bombs
def _declared(path, width: int, height: int):
    """A valid 1x1 PNG whose header (IHDR) declares width x height: nothing but the header is big."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR's data starts after the signature, length and type
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("side", [20000, 10000, 9000])  # beyond Pillow's error limit, its warning, and ours
def test_a_huge_image_is_refused_from_its_header(tmp_path, side):
    assert side * side > MAX_IMAGE_PIXELS
    path = _declared(tmp_path / "bomb.png", side, side)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning would be a second line on stderr
        with pytest.raises(DatasetError, match="too large") as e:
            read_image(path)
        with pytest.raises(UsageError, match="too large"):
            read_digit(str(path))
    assert f"{side * side:,} pixels" in str(e.value) or f"{side}x{side}" in str(e.value)
    assert "8192x8192" in str(e.value)


def test_a_huge_image_through_the_command_and_a_folder(tmp_path, capsys):
    path = _declared(tmp_path / "bomb.png", 20000, 20000)
    line = _one_line_error(["unclip", "--variations", str(path), "--decoder", DECODER, "--out",
                            str(tmp_path / "v.png")], capsys)
    assert "too large" in line and "400,000,000 pixels" in line and "at most 8192x8192" in line
    with pytest.raises(DatasetError, match="bomb.png: the image is too large"):
        load_image_folder(tmp_path, image_size=28)


# ---------------------------------------------------------------------------------------------- --variations's digits
@pytest.mark.parametrize("digits", ["²", "٣", "7²"])
def test_non_ascii_digits_are_not_a_test_index(digits, capsys):
    line = _one_line_error(["unclip", "--variations", digits, "--decoder", DECODER], capsys)
    assert "ASCII digits" in line and digits in line
    with pytest.raises(UsageError, match="ASCII digits"):
        read_digit(digits)


def test_a_missing_file_still_says_so(tmp_path, capsys):
    line = _one_line_error(["unclip", "--variations", str(tmp_path / "none.png"), "--decoder", DECODER], capsys)
    assert "no such file" in line


# ---------------------------------------------------------------------------------------------- visualize unet
@pytest.mark.parametrize("run, kind, network", [("mnist-clip", "clip", "Clip"),
                                                ("mnist-prior", "prior", "DiffusionPrior")])
def test_visualize_unet_names_what_the_run_is(tmp_path, capsys, run, kind, network):
    line = _one_line_error(["visualize", "unet", "--run", f"data/pretrained/{run}.pt", "--out-dir",
                            str(tmp_path)], capsys)
    assert f"kind '{kind}'" in line and network in line and "not a U-Net" in line and "MLP" not in line
    assert "data/pretrained/mnist.pt" in line and "no --run" in line  # what to give instead


# ---------------------------------------------------------------------------------------------- bench
def test_bench_conditions_a_decoder_on_unit_embeddings():
    config = get_preset("mnist-decoder")
    cond = _condition(config, 4, torch.device("cpu"))
    assert cond.shape == (4, config.model.embed_dim) and torch.allclose(cond.norm(dim=-1), torch.ones(4))
    assert _null_like(cond).eq(0).all()  # the embedding's null is the zero vector, not -1


def test_bench_of_the_decoder_preset_runs(tmp_path, capsys):
    """Sampling given embeddings, and Trainer.train_step with the CLIP the decoder names (runs/mnist-clip, else the
    shipped one) encoding each batch."""
    out = tmp_path / "bench.json"
    assert main(["bench", "--preset", "mnist-decoder", "--quick", "--batch-size", "4", "--sample-batch", "2",
                 "--train-steps", "1", "--sample-steps", "1", "--out", str(out)]) == 0
    assert "ddim step" in capsys.readouterr().out
    assert json.loads(out.read_text())["results"]["fp32"]["train"]["images_per_s"] > 0


# ---------------------------------------------------------------------------------------------- flags
@pytest.mark.parametrize("argv, flag", [
    (["unclip", "--variance", "fixed_large", "--variations", "0"], "--variance"),
    (["evaluate", "--aug-level", "0.1", "--run", "data/pretrained/mnist.pt"], "--aug-level"),
])
def test_flags_a_command_does_not_take_are_refused(argv, flag, capsys):
    assert f"unrecognized arguments: {flag}" in _one_line_error(argv, capsys)
