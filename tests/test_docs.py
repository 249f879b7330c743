"""README.md and BENCHMARKS.md against the code: options that exist, measurements without history."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BENCHMARKS = ROOT / "BENCHMARKS.md"

# A git hash as one word of 7-40 hex digits with at least one digit and one letter, so that plain numbers
# ("2026") and hex-looking words ("decade", "faded") are not taken for one.
COMMIT = re.compile(r"\b(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b", re.IGNORECASE)
OPTION = re.compile(r"--[a-z][a-z0-9-]*")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
SPAN = re.compile(r"`([^`\n]+)`")
# Where a dfp command line starts inside a code block: `dfp` itself, or the scripts that are the same commands
# (scripts/shard.py is `dfp shard`, ...). What precedes it on the line is another tool's (torchrun's options).
DFP_START = re.compile(r"(?:^|[\s/])(?:dfp|scripts/(?:shard|train|bench)\.py)\s")


def commit_hashes(text: str) -> list[str]:
    return COMMIT.findall(text)


def dfp_options() -> set[str]:
    """Every option name of every `dfp` command and group, from the Typer app itself."""
    import typer

    from pipeline import cli

    names: set[str] = set()

    def walk(cmd) -> None:
        # typer ships its own click core, so match by what the objects hold rather than click's classes
        for param in cmd.params:
            if param.param_type_name == "option":
                names.update(param.opts)
                names.update(param.secondary_opts)
        for sub in getattr(cmd, "commands", {}).values():
            walk(sub)

    walk(typer.main.get_command(cli.app))
    names.add("--help")  # click adds it to every command outside `params`
    return names


def _expand(text: str) -> str:
    """`--[no-]smote` names both `--smote` and `--no-smote`."""
    return re.sub(r"--\[no-\]([a-z][a-z0-9-]*)", r"--\1 --no-\1", text)


def _block_commands(block: str) -> list[str]:
    """The dfp part of each logical line of a code block (backslash continuations joined, comments cut)."""
    found = []
    for line in block.replace("\\\n", " ").splitlines():
        line = re.sub(r"(^|\s)#.*", "", line)
        start = DFP_START.search(line)
        if start:
            found.append(line[start.end():])
    return found


def readme_options(text: str) -> list[str]:
    """Option names README gives to dfp: in dfp command lines of its code blocks, and in inline code spans
    that are a dfp command (contain `dfp `) or an option named in prose (start with `--`). Spans and lines of
    other tools (torchrun, tensorboard, SLURM, ASVspoof's evaluation.py) are not dfp's and are left out."""
    tokens = []
    for block in FENCE.findall(text):
        for command in _block_commands(block):
            tokens += OPTION.findall(_expand(command))
    prose = FENCE.sub("", text)
    for span in SPAN.findall(prose):
        start = DFP_START.search(span + " ")
        if start:
            tokens += OPTION.findall(_expand(span[start.end():]))
        elif span.startswith("--"):
            tokens += OPTION.findall(_expand(span))
    return tokens


def test_benchmarks_has_no_commit_hashes():
    found = commit_hashes(BENCHMARKS.read_text())
    assert not found, f"BENCHMARKS.md names commits (history lives in git): {found}"


def test_benchmarks_has_no_not_recorded():
    found = re.findall(r".{0,60}not\s+recorded", BENCHMARKS.read_text(), re.IGNORECASE)
    assert not found, f"BENCHMARKS.md: give the command or how it was measured, or drop the number: {found}"


def test_readme_names_only_existing_dfp_options():
    known = dfp_options()
    used = readme_options(README.read_text())
    assert len(used) > 50, "README's dfp command lines were not found; the extraction rule is broken"
    unknown = sorted(set(used) - known)
    assert not unknown, f"README.md names dfp options that do not exist: {unknown}"


@pytest.mark.parametrize("text, expected", [
    ("at commit 46b0ff9 (2026-11-26)", ["46b0ff9"]),
    ("commit d30b0d1, then", ["d30b0d1"]),
    ("20000x20000 PNG, 2026-12-02, decade, faded, 1234567", []),
])
def test_commit_pattern(text, expected):
    assert commit_hashes(text) == expected


def test_readme_rule_keeps_dfp_and_leaves_other_tools():
    text = ("```bash\ntorchrun --nproc_per_node=8 scripts/train.py s --out r \\\n    --batch-size 64\n"
            "dfp train s --out r --tensorboard   # tensorboard --logdir r/tb\n#SBATCH --array=1-16\n```\n"
            "Use `--[no-]smote`, `dfp shard --faces` and `evaluation.py --m t1`.\n")
    assert readme_options(text) == ["--out", "--batch-size", "--out", "--tensorboard", "--smote", "--no-smote",
                                    "--faces"]


def test_option_names_come_from_the_app():
    known = dfp_options()
    assert {"--out", "--faces", "--check", "--minority-augment", "--no-minority-augment", "--help"} <= known
    assert "--no-such-option" not in known
