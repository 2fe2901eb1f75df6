"""The README stays true: its Python example runs, its commands name real presets and flags, its links to the
code land on the definitions they name, it stays a short front door, and no link of it or of docs/ is broken."""

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
MAX_README_LINES = 200

# [`q_sample`](ddpm/diffusion.py#L97), [`Trainer.train_step`](ddpm/training.py#L158)
CODE_LINK = re.compile(r"\[`([A-Za-z_][\w.]*)`\]\((ddpm/[\w/.-]+\.py)#L(\d+)\)")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def test_the_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert namespace["sevens"].shape == (16, 1, 28, 28)
    assert namespace["loss"].ndim == 0 and namespace["loss"].item() > 0


def test_every_preset_in_the_table_exists():
    from ddpm.presets import PRESETS

    named = set(re.findall(r"^\| `([\w-]+)`", README, flags=re.M))
    assert named and named <= set(PRESETS), named - set(PRESETS)


def test_the_commands_parse():
    from ddpm.cli import build_parser

    parser = build_parser()
    for line in re.findall(r"^(python -m ddpm [^#\n]*)", README, flags=re.M):
        argv = shlex.split(line)[3:]  # as a shell splits it: quoted prompts are one argument
        argv = [a for a in argv if a != "\\"]
        parser.parse_args(argv)  # exits with status 2 on an unknown flag or choice


def test_the_readme_is_a_short_front_door():
    """Details live in docs/; the README says what this is, how to start and how to read the code."""
    n = len(README.splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines (at most {MAX_README_LINES}): move details to docs/"


def _definition(name: str) -> re.Pattern:
    return re.compile(rf"^\s*(?:async\s+)?(?:def|class)\s+{re.escape(name)}\b")


def test_code_links_land_on_their_definitions():
    """Every [`name`](ddpm/....py#L<n>) of the README points at the line that defines `name` (the last part of a
    dotted name; for `Class.method`, inside that class). Line numbers move when the code does: the message says
    where the definition is now."""
    links = CODE_LINK.findall(README)
    assert links, "the README's reading path links to the code with line anchors"
    wrong = []
    for name, path, line in links:
        file = ROOT / path
        if not file.is_file():
            wrong.append(f"[`{name}`]({path}#L{line}): no such file")
            continue
        lines = file.read_text().splitlines()
        *owners, last = name.split(".")
        n = int(line)
        target = _definition(last)
        if not (1 <= n <= len(lines) and target.match(lines[n - 1])):
            now = [i + 1 for i, text in enumerate(lines) if target.match(text)]
            wrong.append(f"[`{name}`]({path}#L{line}): line {line} does not define {last}; "
                         f"it is defined at {', '.join(f'#L{i}' for i in now) or 'no line of that file'}")
            continue
        if owners:  # Class.method: the nearest class above the method is that class
            classes = [text for text in lines[:n - 1] if re.match(r"^class\s+\w+", text)]
            if not classes or not _definition(owners[-1]).match(classes[-1]):
                wrong.append(f"[`{name}`]({path}#L{line}): {last} at line {line} is not in class {owners[-1]}")
    assert not wrong, "\n".join(wrong)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(text: str) -> set[str]:
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        m = None if fenced else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = _slug(m.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _without_code(text: str) -> str:
    """The text outside fenced code blocks and inline code spans (where a "[x](y)" is not a link)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def test_links_of_the_readme_and_docs_resolve():
    """Every relative link of README.md and docs/*.md names a file that exists, and every #anchor into a markdown
    page names one of its headings (so a section that moved is not linked under its old page)."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        text = page.read_text()
        for target in LINK.findall(_without_code(text)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(ROOT)}: ({target})"
            if not file.exists():
                broken.append(f"{where}: no such file")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file.read_text()):
                broken.append(f"{where}: no heading #{anchor} in {file.relative_to(ROOT)}")
    assert not broken, "\n".join(broken)
