"""One vocabulary across every `dfp` command, read from the click tree that Typer builds and from the help it prints.

Placeholders are uppercase names; switches show no value; every parameter says what it is and what it defaults to;
an option name means one thing with one format wherever it appears. New options are held to the same rules.
"""
import re
from collections import defaultdict

import pytest
import typer
from typer.testing import CliRunner

from pipeline import cli, validate as v

ROOT = typer.main.get_command(cli.app)

# Option names that deliberately mean different things in different commands (both forms are in the contract):
# `stats --json` prints JSON instead of text; `bench ... --json PATH` writes the results to PATH as well.
HOMONYMS = {"--json"}
# Options whose value is one of a fixed vocabulary, the same everywhere the option appears.
VOCABULARY = {"--sampling": cli.SAMPLINGS, "--device": v.DEVICES}
PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*")


def _commands(cmd, path=()):
    subs = getattr(cmd, "commands", None)
    if subs:
        for name, sub in sorted(subs.items()):
            yield from _commands(sub, (*path, name))
    else:
        yield path, cmd


COMMANDS = list(_commands(ROOT))
IDS = [" ".join(p) for p, _ in COMMANDS]


def _options(cmd):
    return [p for p in cmd.params if p.param_type_name == "option" and not p.hidden]


def _shown_type(cmd, param) -> str:
    """What the help shows after the option's name: its metavar, or the type Typer derives; '' for none."""
    ctx = cmd.context_class(cmd, info_name=cmd.name)
    return param.display_type_rich(ctx) or ""


def _help(path) -> str:
    res = CliRunner().invoke(cli.app, [*path, "--help"], env={"COLUMNS": "300", "NO_COLOR": "1"})
    assert res.exit_code == 0, res.output
    return res.output


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=IDS)
def test_placeholders_are_uppercase_names(path, cmd):
    for p in cmd.params:
        if p.param_type_name == "argument":
            assert PLACEHOLDER.fullmatch(p.metavar or p.name), f"{' '.join(path)}: argument {p.name!r} shows as " \
                                                               f"{p.metavar or p.name!r}"
    usage = next(line for line in _help(path).splitlines() if "Usage:" in line)
    pieces = usage.split(" ".join(path), 1)[1].split()
    for piece in pieces:
        assert piece == "[OPTIONS]" or re.fullmatch(r"[{\[][A-Z][A-Z0-9_]*[}\]](\.\.\.)?", piece), usage


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=IDS)
def test_switches_are_shown_as_switches(path, cmd):
    for p in _options(cmd):
        if p.is_flag:
            assert _shown_type(cmd, p) == "", f"{' '.join(path)} {p.opts[0]} is a switch but shows a value"
    assert "<bool>" not in _help(path)


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=IDS)
def test_every_parameter_says_what_it_is_and_its_default(path, cmd):
    for p in cmd.params:
        name = p.opts[0] if p.param_type_name == "option" else p.name
        if getattr(p, "hidden", False) or name == "--help":
            continue
        assert p.help, f"{' '.join(path)} {name}: no help text"
        if p.param_type_name != "option" or p.is_flag or p.required:
            continue
        assert p.show_default is not False, f"{' '.join(path)} {name}: default hidden"
        if p.default is None:  # Typer shows nothing, so the text must say what happens without the option
            assert re.search(r"default|as for dfp \w+", p.help), f"{' '.join(path)} {name}: help does not say " \
                                                                 f"what the default is: {p.help!r}"


def test_one_name_one_format():
    shown = defaultdict(set)
    for path, cmd in COMMANDS:
        for p in _options(cmd):
            if p.opts[0] not in HOMONYMS:
                shown[p.opts[0]].add((p.is_flag, _shown_type(cmd, p)))
    assert {name: forms for name, forms in shown.items() if len(forms) > 1} == {}


@pytest.mark.parametrize("name,words", sorted(VOCABULARY.items()))
def test_one_vocabulary_for_choices(name, words):
    found = 0
    for path, cmd in COMMANDS:
        for p in _options(cmd):
            if p.opts[0] == name:
                found += 1
                assert p.default in words, f"{' '.join(path)} {name} defaults to {p.default!r}, not one of {words}"
                listed = set(re.findall(r"[a-z_]+", p.help))
                assert set(words) <= listed, f"{' '.join(path)} {name}: help {p.help!r} does not list {words}"
    assert found > 1


def test_image_size_is_a_side_everywhere_and_wxh_where_non_square_makes_sense():
    assert v.image_size_wxh("64", "image") == (64, 64)
    assert v.image_size_wxh("64x48", "image") == (64, 48)


def _main(argv, monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.setattr("sys.argv", ["dfp", *map(str, argv)])
    with pytest.raises(SystemExit) as e:
        cli.main()
    return e.value.code, capsys.readouterr().err


@pytest.fixture
def shards(tmp_path):
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "manifest.json").write_text('{"format": "dfp-shards/1", "modality": "image"}')
    return tmp_path / "shards"


def test_bench_loader_takes_trains_sampling_names_and_weighted_as_an_unlisted_alias(shards, monkeypatch, capsys):
    import pipeline.bench
    got = {}
    monkeypatch.setattr(pipeline.bench, "machine", dict)
    monkeypatch.setattr(pipeline.bench, "bench_loader", lambda *a: got.setdefault("row", dict(
        backend="torch", device="cpu", samples_per_s=1.0, samples=1, seconds=1.0, class_counts={}, sampling=a[4])))
    code, err = _main(["bench", "loader", shards, "--sampling", "weighted", "--device", "cpu"], monkeypatch, capsys)
    assert code in (0, None) and got["row"]["sampling"] == "inverse", err
    code, err = _main(["bench", "loader", shards, "--sampling", "over"], monkeypatch, capsys)
    assert code == 2 and err.strip() == "error: --sampling 'over': choose inverse, sqrt or natural"
    assert "weighted" not in _help(("bench", "loader"))


@pytest.mark.parametrize("command", ["evaluate", "tune", "predict"])
def test_a_run_folder_stands_for_its_best_model(command, shards, tmp_path, monkeypatch, capsys):
    import pipeline.evaluate
    import pipeline.predict
    run = tmp_path / "run"
    run.mkdir()
    seen = []
    target = {"evaluate": (pipeline.evaluate, "evaluate"), "tune": (pipeline.evaluate, "tune"),
              "predict": (pipeline.predict, "predict_files")}[command]
    monkeypatch.setattr(*target, lambda ckpt, *a, **k: seen.append(ckpt))
    argv = [command, run, shards if command != "predict" else tmp_path, "--device", "cpu"]

    code, err = _main(argv, monkeypatch, capsys)
    assert code == 2 and not seen
    assert err.strip() == f"error: CKPT {run}: folder without best_model.pth; give a checkpoint file or the folder " \
                          f"of a finished dfp train run"

    (run / "best_model.pth").write_bytes(b"stands for a checkpoint")
    code, err = _main(argv, monkeypatch, capsys)
    assert code in (0, None) and seen == [run / "best_model.pth"], err
