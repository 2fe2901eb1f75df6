"""What every command shares: argument types that check their range at parse time, the device and
thread flags, finding the run to load, turning --class/--prompt into a condition, and checking output
paths before any work is done. Every error here is a UsageError: one line, exit code 2."""

from __future__ import annotations

import argparse
import math
import os
import textwrap
from pathlib import Path

import torch

from ddpm._files import is_ddpm_json, record_path
from ddpm._util import set_threads, shorten
from ddpm.checkpoints import CHECKPOINT_NAME, CheckpointError, LoadedRun, load_run
from ddpm.checkpoints import PRETRAINED as SHIPPED  # the folder of the shipped models
from ddpm.conditions import balanced_labels, condition_for_labels, num_conditions
from ddpm.diffusion import VARIANCES
from ddpm.exports import check_model_output
from ddpm.nn.conditioning import UnknownWordsError
from ddpm.runtime import DEVICE_HELP, select_device
from ddpm.samplers import PRECISIONS, SAMPLERS, SPACINGS, THRESHOLDS, check_guidance, default_steps

__all__ = ["UsageError", "check_prompt", "DEFAULT_RUN", "PRETRAINED", "DEFAULT_TEXT_RUN", "PRETRAINED_TEXT",
           "positive_int", "nonnegative_int", "finite_float", "nonnegative_float", "guidance_scale", "add_run_flag",
           "add_sampler_flags", "sampler_flags", "add_device_flags", "setup_device", "resolve_run", "load_image_run",
           "resolve_condition", "class_index", "check_output", "check_record", "MAX_ECHO", "vocabulary_text"]

DEFAULT_RUN = "runs/mnist"
PRETRAINED = SHIPPED / "mnist.pt"
DEFAULT_TEXT_RUN = "runs/mnist-text"  # where --prompt and --vocabulary look first when --run is not given
PRETRAINED_TEXT = PRETRAINED.with_name("mnist-text.pt")
MAX_ECHO = 60  # characters of user input echoed back in an error line


class UsageError(ValueError):
    """A bad argument: printed as one line."""


# ---------------------------------------------------------------------------------- argument types
def _number(kind, text: str, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {shorten(text, MAX_ECHO)!r}") from None
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = _number(int, text, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = _number(int, text, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def finite_float(text: str) -> float:
    """argparse type: a finite number (no nan, no inf)."""
    value = _number(float, text, "a number")
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def guidance_scale(text: str) -> float:
    """argparse type: a classifier-free guidance scale, finite and at most MAX_GUIDANCE in size."""
    value = finite_float(text)
    try:
        return check_guidance(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_run_flag(p: argparse.ArgumentParser) -> None:
    """--run: the trained model to load (see resolve_run)."""
    p.add_argument("--run", default=None, help=f"run folder or exported .pt (default: {DEFAULT_RUN}, else the "
                                                f"shipped pretrained MNIST model; with --prompt: {DEFAULT_TEXT_RUN}, "
                                                "else the shipped text model)")


def sampler_list(text: str) -> list[str]:
    """argparse type: comma-separated sampler names, e.g. ddim,dpmpp-2m."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SAMPLERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown sampler {shorten(','.join(unknown) or text, MAX_ECHO)!r}; "
                                         f"expected one or more of {', '.join(SAMPLERS)}, separated by commas")
    return names


def steps_list(text: str) -> list[int]:
    """argparse type: comma-separated positive step counts, e.g. 5,10,20."""
    return [positive_int(part) for part in text.split(",")]


def add_sampler_flags(p: argparse.ArgumentParser, default: str | None = "ddim", several: bool = False,
                      precision: str = "fp32", default_text: str | None = None) -> None:
    """--sampler, --steps, --spacing, --threshold, --eta and --variance: how to sample, the same on every command.
    several=True lets --sampler and --steps take comma-separated lists (evaluate's sweep)."""
    lists = " (comma-separated lists make a sweep)" if several else ""
    p.add_argument("--sampler", type=sampler_list if several else str, choices=None if several else SAMPLERS,
                   default=[default] if several else default,
                   help=f"ancestral (the paper's Algorithm 2), ddim, dpmpp-2m or dpmpp-3m (DPM-Solver++; 3m for "
                        f"unguided sampling), dpmpp-2m-sde (its stochastic form: no background speckle) (default: "
                        f"{default_text or default}){lists}")
    p.add_argument("--steps", type=steps_list if several else positive_int,
                   help=f"sampling steps (default: T for ancestral, 50 for ddim, 15 for dpmpp-2m/3m, 25 for "
                        f"dpmpp-2m-sde){lists}")
    p.add_argument("--spacing", choices=SPACINGS, default="uniform",
                   help="which timesteps a sampler with fewer than T steps visits: uniform in t (default), "
                        "uniform in lambda = log(alpha/sigma), or karras (rho = 7)")
    p.add_argument("--threshold", choices=THRESHOLDS, default=None,
                   help="predicted x_0 outside [-1, 1]: clip (default for pixels), dynamic (Imagen's, percentile "
                        "0.995) or none (default for a latent model: latents are not in [-1, 1])")
    p.add_argument("--precision", choices=PRECISIONS, default=precision,
                   help=f"the network's arithmetic: fp32, bf16 (autocast), or auto (bf16 where the CPU or GPU has "
                        f"bf16 units, else fp32) (default: {precision})")
    p.add_argument("--eta", type=nonnegative_float, default=None,
                   help="ddim: eta (0, the default: deterministic; 1: ancestral-like); dpmpp-2m-sde: the SDE's noise "
                        "scale in (0, 1] (default 1)")
    p.add_argument("--variance", choices=VARIANCES, default=None,
                   help="ancestral: sigma_t^2 = beta_tilde (fixed_small, default) or beta (fixed_large), or the "
                        "network's own (learned_range, the default for a learned-variance model)")


def sampler_flags(args, T: int | None, sampler: str | None = None,
                    steps: int | None = None) -> tuple[int | None, dict]:
    """(steps, keyword arguments for ddpm.samplers.sample) from the sampler flags, checked against the model's T
    (None: not known yet; steps stays None for the sampler's default). sampler/steps override the flags'."""
    sampler = sampler if sampler is not None else args.sampler
    steps = steps if steps is not None else args.steps
    steps = steps if steps is not None or T is None else default_steps(sampler, T)
    if T is not None and steps > T:
        raise UsageError(f"--steps {steps} is more than this model's T = {T}")
    options = {"spacing": args.spacing, "threshold": args.threshold, "precision": args.precision}
    for flag, value, own in (("eta", args.eta, ("ddim", "dpmpp-2m-sde")), ("variance", args.variance, ("ancestral",))):
        if value is not None and sampler not in own:
            raise UsageError(f"--{flag} is for the {' and '.join(own)} sampler{'s' * (len(own) > 1)}, not {sampler}")
        if value is not None:
            options[flag] = value  # else the sampler's default (eta 0, fixed_small)
    return steps, options


def add_device_flags(p: argparse.ArgumentParser) -> None:
    """--device and --threads, the same on every command."""
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--threads", type=positive_int, help="CPU threads for torch (default: torch's choice; 1 is "
                                                        "often faster on a machine that is busy with other work)")


def setup_device(args) -> torch.device:
    """Apply --threads and return the --device (a one-line error for an unknown or absent device)."""
    set_threads(args.threads)
    return select_device(args.device)


# ---------------------------------------------------------------------------------- runs
def resolve_run(run: str | None, text: bool = False) -> Path:
    """--run as given, else runs/mnist if it has a checkpoint, else the shipped pretrained model; with
    ``text`` (a prompt was given) runs/mnist-text, else the shipped text model."""
    if run is not None:
        return Path(run)
    default, pretrained = (DEFAULT_TEXT_RUN, PRETRAINED_TEXT) if text else (DEFAULT_RUN, PRETRAINED)
    if (Path(default) / CHECKPOINT_NAME).exists():
        return Path(default)
    if pretrained.exists():
        return pretrained
    preset = " --preset mnist-text" if text else ""
    raise UsageError(f"no --run given and no {default}/{CHECKPOINT_NAME}; train first: python -m ddpm train{preset}")


def load_image_run(run: str | None, device, use_ema: bool = True, text: bool = False) -> LoadedRun:
    """The run of --run (see resolve_run), refusing what ``sample`` does not draw (Kind.usage says what does)."""
    loaded = load_run(resolve_run(run, text), device=device, use_ema=use_ema)
    why = loaded.config.hook.usage(loaded)  # a 2D toy, a system's stage that another command draws
    if why is not None:
        raise UsageError(why)
    return loaded


def class_index(klass: str, loaded: LoadedRun) -> int:
    """--class as an index: a number or a class name (case-insensitive)."""
    def key(name: str) -> str:  # "Ankle boot", "ankle-boot" and "ankle_boot" name one class, as "T-shirt" and "tshirt"
        return "".join(ch for ch in name.lower() if ch.isalnum())

    names = [key(n) for n in loaded.label_names]
    num = num_conditions(loaded.cond, loaded.config.model.num_classes, loaded.label_names)
    if klass.lstrip("-").isdigit():
        k = int(klass)
    elif key(klass) and key(klass) in names:
        k = names.index(key(klass))
    else:
        known = ", ".join(f"{i}={n}" for i, n in enumerate(loaded.label_names)) or f"0..{num - 1}"
        raise UsageError(f"--class {shorten(klass, MAX_ECHO)!r} is neither a number nor a class name; classes: {known}")
    if not 0 <= k < num:
        raise UsageError(f"--class {k} is out of range: this model has classes 0..{num - 1}")
    return k


def resolve_condition(loaded: LoadedRun, n: int | None, klass: str | None, prompt: str | None):
    """(cond, n, nrow) for a run: a class label, a prompt, or one row per class; one-line errors otherwise."""
    mode, names, dataset = loaded.cond, loaded.label_names, loaded.config.data.dataset
    if klass is not None and prompt is not None:
        raise UsageError("give --class or --prompt, not both")
    if mode == "none":
        if klass is not None or prompt is not None:
            raise UsageError(f"{loaded.path} is an unconditional model: drop --class/--prompt")
        return None, n or 64, 8
    if mode == "class" and prompt is not None:
        raise UsageError(f"{loaded.path} is class-conditional: use --class, not --prompt")
    if prompt is not None:
        check_prompt(prompt, loaded.model.conditioner.tokenizer, loaded.config.model.max_prompt_len,
                     f"list the {{n}} known words with: python -m ddpm sample --vocabulary{_run_flag(loaded)}")
        return [prompt] * (n or 64), n or 64, 8
    if klass is not None:
        labels = torch.full((n or 64,), class_index(klass, loaded), dtype=torch.long)
        return condition_for_labels(mode, labels, names, dataset), n or 64, 8
    classes = num_conditions(mode, loaded.config.model.num_classes, names)
    labels = balanced_labels(n or 8 * classes, classes, grouped=True)
    return condition_for_labels(mode, labels, names, dataset), len(labels), len(labels) // classes


def check_prompt(prompt: str, tokenizer, max_len: int, words_hint: str) -> None:
    """--prompt is one a text encoder can read (words it knows, at most max_len of them), or one line saying
    why not; words_hint ("{n}": how many words it knows) says where they are listed."""
    if not prompt.strip():
        raise UsageError("--prompt is empty; give a prompt such as \"a thick seven\" (the empty prompt is the "
                         "null condition, which guidance contrasts a prompt with)")
    try:
        tokenizer.encode([prompt], max_len)
    except UnknownWordsError as e:
        raise UsageError(f"--prompt: {shorten(e.describe(), 260)}; {words_hint.format(n=e.vocab_size)}") from None
    except ValueError as e:
        raise UsageError(shorten(str(e), 200)) from None


def _run_flag(loaded: LoadedRun) -> str:
    """ --run <path> as the user would type it again (nothing when it is the default run)."""
    path = loaded.path.parent if loaded.path.name == CHECKPOINT_NAME else loaded.path
    defaults = (Path(DEFAULT_RUN), PRETRAINED, Path(DEFAULT_TEXT_RUN), PRETRAINED_TEXT)
    return "" if path in defaults else f" --run {shorten(path, MAX_ECHO)}"


def vocabulary_text(loaded: LoadedRun, width: int = 100) -> str:
    """What ``sample --vocabulary`` prints: the words a text model knows, and how long a prompt may be."""
    if loaded.cond != "text":
        raise UsageError(f"{loaded.path} is {'class-conditional' if loaded.cond == 'class' else 'unconditional'}: "
                         f"only a text model has a vocabulary")
    words = loaded.model.conditioner.tokenizer.vocab
    head = (f"{len(words)} words that {loaded.path} knows (a prompt has at most {loaded.config.model.max_prompt_len} "
            f"words; case and punctuation do not matter; the empty prompt is the null condition):")
    return head + "\n" + textwrap.fill(" ".join(words), width=width)


# ---------------------------------------------------------------------------------- output paths
def check_output(path: str | os.PathLike, suffixes: tuple[str, ...], flag: str) -> Path:
    """Check before any work that ``path`` can be written as a file of one of ``suffixes``: not a folder,
    a known extension, a parent that is (or can be) a folder we may write in. Creates no file."""
    path = Path(path)
    shown = shorten(path, 160)
    if path.is_dir():
        raise UsageError(f"{flag} {shown} is a folder; give a file name ending in {' or '.join(suffixes)}")
    if path.suffix.lower() not in suffixes:
        raise UsageError(f"{flag} {shown}: unknown file extension {path.suffix or '(none)'!r}; use "
                         f"{' or '.join(suffixes)}")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {shown}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {shown}: no permission to write in {parent}")
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{flag} {shown}: the file exists and is not writable")
    if path.exists():
        _check_replaceable(path, flag, shown)
    return path


SIGNATURES = {".png": (b"\x89PNG\r\n\x1a\n", "a PNG image"), ".gif": (b"GIF8", "a GIF animation"),
              ".npz": (b"PK\x03\x04", "a NumPy .npz archive")}


def _check_replaceable(path: Path, flag: str, shown: str) -> None:
    """A file that exists may be replaced only by one of its kind: a model ddpm exported by another (never a run's
    training checkpoint), a JSON report or record ddpm wrote (never a run's config.json or a user's JSON), a PNG
    or GIF by another."""
    suffix = path.suffix.lower()
    if suffix == ".pt":
        try:
            check_model_output(path)
        except CheckpointError as e:
            raise UsageError(f"{flag}: {e}") from None
        return
    if suffix == ".json":
        ok, kind = is_ddpm_json(path), "a JSON report or record that ddpm wrote"
    elif suffix in SIGNATURES:
        head, kind = SIGNATURES[suffix]
        with path.open("rb") as f:
            ok = f.read(len(head)) == head
    else:
        return
    if not ok:
        raise UsageError(f"{flag} {shown} exists and is not {kind}; ddpm replaces only a file of the kind it writes: "
                         f"choose another name, or delete the file first")


def check_record(output: Path) -> Path:
    """The record beside an output (ddpm._files.record_path: output's name with .json added), checked like an
    output: a file of that name that ddpm did not write is refused, never replaced."""
    return check_output(record_path(output), (".json",), f"the record of {shorten(output, 80)}")
