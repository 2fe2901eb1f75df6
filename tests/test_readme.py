"""The README stays true: its Python example runs, and its commands name real presets and flags."""

import re
import shlex
from pathlib import Path

from ddpm.cli import build_parser
from ddpm.presets import PRESETS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_the_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert namespace["sevens"].shape == (16, 1, 28, 28)
    assert namespace["loss"].ndim == 0 and namespace["loss"].item() > 0


def test_every_preset_in_the_table_exists():
    named = set(re.findall(r"^\| `([\w-]+)`", README, flags=re.M))
    assert named and named <= set(PRESETS), named - set(PRESETS)


def test_the_commands_parse():
    parser = build_parser()
    for line in re.findall(r"^(python -m ddpm [^#\n]*)", README, flags=re.M):
        argv = shlex.split(line)[3:]  # as a shell splits it: quoted prompts are one argument
        argv = [a for a in argv if a != "\\"]
        parser.parse_args(argv)  # exits with status 2 on an unknown flag or choice
