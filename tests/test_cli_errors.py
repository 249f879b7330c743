"""Bad invocations of every command: exit 2, one `error:` line naming the option, no traceback, nothing written.

Most rows run in-process through `cli.main` (the exit-code mapping lives there); a few run as real
subprocesses, which also shows that rejecting them does not import torch.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from factory import image_tree
from pipeline import cli

REPO = Path(__file__).resolve().parents[1]

# Placeholders: {S} a shard folder (manifest only), {I} an existing empty folder, {C} an existing file standing
# for a checkpoint, {F} a plain file (nothing can be created below it), {T} the test's folder; {T}/o does not exist.
BAD = [
    # synth
    ("synth {T}/o --modality text", "--modality 'text': choose image, audio or video"),
    ("synth {T}/o --n-real 0", "--n-real must be at least 1"),
    ("synth {T}/o --n-fake -1", "--n-fake must be at least 1"),
    ("synth {T}/o --seed -1", "--seed must be at least 0"),
    ("synth {T}/o --image-size 12x", "--image-size '12x': give a side N or WxH"),
    ("synth {T}/o --image-size 4", "--image-size '4': both sides must be at least 8"),
    ("synth {T}/o --image-size 4x4", "--image-size '4x4': both sides must be at least 8"),
    ("synth {T}/o --modality audio --image-size 64x64", "--image-size applies to --modality image only"),
    ("synth {F}/o", "OUT {F}/o: {F} is a file"),
    # shard
    ("shard {T}/nope {T}/o", "INPUT {T}/nope: folder not found"),
    ("shard {I} {F}", "OUT {F}: is a file"),
    ("shard {I} {T}/o --modality text", "--modality 'text': choose auto, image, audio or video"),
    ("shard {I} {T}/o --split 0.5,0.5", "--split '0.5,0.5'"),
    ("shard {I} {T}/o --seed -1", "--seed must be at least 0"),
    ("shard {I} {T}/o --workers 0", "--workers must be at least 1"),
    ("shard {I} {T}/o --max-count 0", "--max-count must be at least 1"),
    ("shard {I} {T}/o --max-size 0", "--max-size must be at least 1"),
    ("shard {I} {T}/o --max-samples-per-class 0", "--max-samples-per-class must be at least 1"),
    ("shard {I} {T}/o --faces --face-margin 0.9", "--face-margin must be at least 1.0"),
    ("shard {I} {T}/o --faces --face-size 16", "--face-size must be at least 32"),
    ("shard {I} {T}/o --faces --face-quality 101", "--face-quality must be at most 100"),
    ("shard {I} {T}/o --faces --face-quality 0", "--face-quality must be at least 1"),
    ("shard {I} {T}/o --faces --modality audio", "--faces applies to image and video input"),
    ("shard {I} {T}/o --class-map foo", "--class-map: entry 'foo'"),
    ("shard {I} {T}/o --group-depth -1", "--group-depth must be at least 0"),
    ("shard {I} {T}/o --max-side 8", "--max-side must be at least 16"),
    ("shard {I} {T}/o --sample-rate 0", "--sample-rate must be at least 1"),
    ("shard {I} {T}/o --frames 0", "--frames must be at least 1"),
    ("shard {I} {T}/o --check fast", "--check 'fast': choose decode or structure"),
    ("shard {I} --frames 0", "--frames must be at least 1"),  # default OUT (shards/data under cwd) not created
    # verify, stats
    ("verify {T}/nope", "SHARDS {T}/nope: folder not found"),
    ("stats {T}/nope", "SHARDS_OR_INPUT {T}/nope: folder not found"),
    ("stats {I} --plot {I}", "--plot {I}: is a folder"),
    ("stats {I} --plot {F}/p.png", "--plot {F}/p.png: {F} is a file"),
    ("stats {I} --class-map foo", "--class-map: entry 'foo'"),
    # train
    ("train {T}/nope --out {T}/o", "SHARDS {T}/nope: folder not found"),
    ("train {I} --out {T}/o", "manifest.json not found"),
    ("train {S} --out {T}/o --epochs 0", "--epochs must be at least 1"),
    ("train {S} --out {T}/o --batch-size 0", "--batch-size must be at least 1"),
    ("train {S} --out {T}/o --lr 0", "--lr must be a positive number"),
    ("train {S} --out {T}/o --lr nan", "--lr must be a positive number"),
    ("train {S} --out {T}/o --weight-decay -1", "--weight-decay must be at least 0"),
    ("train {S} --out {T}/o --weight-decay inf", "--weight-decay must be a finite number"),
    ("train {S} --out {T}/o --seed -1", "--seed must be at least 0"),
    ("train {S} --out {T}/o --model foo", "--model 'foo': choose efficientnet_b0"),
    ("train {S} --out {T}/o --frame-backbone audio_resnet18", "--frame-backbone 'audio_resnet18': choose"),
    ("train {S} --out {T}/o --weights {T}/w.pth", "--weights {T}/w.pth: file not found"),
    ("train {S} --out {T}/o --strategy smart", "--strategy 'smart': choose auto or manual"),
    ("train {S} --out {T}/o --loss hinge", "--loss 'hinge': choose focal, weighted_bce or bce"),
    ("train {S} --out {T}/o --focal-alpha 2", "--focal-alpha '2': must be in [0, 1]"),
    ("train {S} --out {T}/o --focal-alpha high", "--focal-alpha 'high': give a number"),
    ("train {S} --out {T}/o --focal-gamma -1", "--focal-gamma must be at least 0"),
    ("train {S} --out {T}/o --sampling over", "--sampling 'over': choose inverse, sqrt or natural"),
    ("train {S} --out {T}/o --class-weights real=1", "--class-weights: no weight for class 'fake'"),
    ("train {S} --out {T}/o --class-weights real=0,fake=0", "--class-weights 'real=0,fake=0': at least one weight must be above 0"),
    ("train {S} --out {T}/o --class-weights real=x,fake=1", "--class-weights 'real=x,fake=1': weight 'x'"),
    ("train {S} --out {T}/o --amp fp8", "--amp 'fp8': choose auto, bf16, fp16 or off"),
    ("train {S} --out {T}/o --workers -1", "--workers must be at least 0"),
    ("train {S} --out {T}/o --image-size 7", "--image-size must be at least 32"),
    ("train {S} --out {T}/o --audio-seconds 0", "--audio-seconds must be a positive number"),
    ("train {S} --out {T}/o --max-samples-per-class 0", "--max-samples-per-class must be at least 1"),
    ("train {S} --out {T}/o --epoch-len -5", "--epoch-len must be at least 1"),
    ("train {S} --out {T}/o --patience -1", "--patience must be at least 0"),
    ("train {S} --out {T}/o --threshold-method best", "--threshold-method: unknown threshold method 'best'"),
    ("train {S} --out {T}/o --threshold-method precision:2", "--threshold-method: threshold method 'precision:2'"),
    ("train {S} --out {T}/o --save-every -1", "--save-every must be at least 0"),
    ("train {S} --out {T}/o --device gpu", "--device 'gpu': choose auto, cpu or cuda"),
    ("train {S} --out {T}/o --device cuda:x", "--device 'cuda:x': choose auto, cpu or cuda"),
    ("train {S} --out {T}/o --backend fast", "--backend 'fast': choose auto, dali or torch"),
    ("train {S} --out {F}", "--out {F}: is a file"),
    ("train {S} --epochs 0", "--epochs must be at least 1"),  # default --out (runs/exp under cwd) not created
    # evaluate, tune
    ("evaluate {T}/m.pth {S} --out {T}/o", "CKPT {T}/m.pth: file not found"),
    ("evaluate {C} {T}/nope --out {T}/o", "SHARDS {T}/nope: folder not found"),
    ("evaluate {I} {S} --out {T}/o", "CKPT {I}: folder without best_model.pth"),
    ("evaluate {C} {S} --out {T}/o --split dev", "--split 'dev': choose train, val or test"),
    ("evaluate {C} {S} --out {T}/o --batch-size 0", "--batch-size must be at least 1"),
    ("evaluate {C} {S} --out {T}/o --device tpu", "--device 'tpu'"),
    ("evaluate {C} {S} --out {T}/o --backend fast", "--backend 'fast'"),
    ("evaluate {C} {S} --out {F}", "--out {F}: is a file"),
    ("tune {C} {S} --method prec", "--method: unknown threshold method 'prec'"),
    ("tune {C} {S} --method precision:2", "--method: threshold method 'precision:2'"),
    ("tune {C} {S} --batch-size 0", "--batch-size must be at least 1"),
    ("tune {C} {S} --device tpu", "--device 'tpu'"),
    ("tune {C} {S} --backend fast", "--backend 'fast'"),
    ("tune {T}/m.pth {S}", "CKPT {T}/m.pth: file not found"),
    # report, predict
    ("report {T}/nope", "RUN {T}/nope: folder not found"),
    ("report {I}", "is it a dfp run directory?"),
    ("predict {T}/m.pth {I} --out {T}/p.csv", "CKPT {T}/m.pth: file not found"),
    ("predict {C} {T}/nope --out {T}/p.csv", "PATHS {T}/nope: file or folder not found"),
    ("predict {C} {I} --out {T}/p.csv --batch-size 0", "--batch-size must be at least 1"),
    ("predict {C} {I} --out {T}/p.csv --device tpu", "--device 'tpu'"),
    ("predict {C} {I} --out {I}", "--out {I}: is a folder"),
    ("predict {C} {I} --batch-size 0", "--batch-size must be at least 1"),  # default --out preds.csv not created
    # bench
    ("bench shard {T}/nope", "INPUT {T}/nope: folder not found"),
    ("bench shard {I} --workers 0", "--workers must be at least 1"),
    ("bench shard {I} --json {I}", "--json {I}: is a folder"),
    ("bench loader {S} --batches 0", "--batches must be at least 1"),
    ("bench loader {S} --batch-size 0", "--batch-size must be at least 1"),
    ("bench loader {S} --warmup -1", "--warmup must be at least 0"),
    ("bench loader {S} --workers -1", "--workers must be at least 0"),
    ("bench loader {S} --image-size 16", "--image-size must be at least 32"),
    ("bench loader {S} --split dev", "--split 'dev'"),
    ("bench loader {S} --sampling over", "--sampling 'over': choose inverse, sqrt or natural"),
    ("bench loader {S} --backend fast", "--backend 'fast': choose dali, torch or seed"),
    ("bench loader {S} --device tpu", "--device 'tpu'"),
    ("bench loader {T}/nope", "SHARDS {T}/nope: folder not found"),
    ("bench loader {I} --backend torch", "manifest.json not found"),
    ("bench loader {T}/nope --backend seed", "SHARDS {T}/nope: folder not found"),
    ("bench loader {S} --json {F}/b.json", "--json {F}/b.json: {F} is a file"),
    ("bench train {S} --batches 0", "--batches must be at least 1"),
    ("bench train {S} --batch-size 0", "--batch-size must be at least 1"),
    ("bench train {S} --image-size 8", "--image-size must be at least 32"),
    ("bench train {S} --backend auto", "--backend 'auto': choose dali or torch"),
    ("bench train {S} --model foo", "--model 'foo'"),
    ("bench train {S} --device tpu", "--device 'tpu'"),
    ("bench train {T}/nope", "SHARDS {T}/nope: folder not found"),
    ("bench all --work {T}/o --samples 10", "--samples must be at least 20"),
    ("bench all --work {T}/o --batches 0", "--batches must be at least 1"),
    ("bench all --work {T}/o --rounds 0", "--rounds must be at least 1"),
    ("bench all --work {T}/o --train-batches 0", "--train-batches must be at least 1"),
    ("bench all --work {T}/o --train-image-size 8", "--train-image-size must be at least 32"),
    ("bench all --work {T}/o --memory-sizes 1,x", "--memory-sizes '1,x': give comma-separated integers"),
    ("bench all --work {T}/o --memory-sizes 0", "--memory-sizes '0': every size must be at least 1"),
    ("bench all --work {T}/o --train-model audio_resnet18", "--train-model 'audio_resnet18'"),
    ("bench all --work {F}", "--work {F}: is a file"),
    ("bench all --work {T}/o --json {I}", "--json {I}: is a folder"),
    # demo
    ("demo --out {T}/o --modality text", "--modality 'text'"),
    ("demo --out {T}/o --epochs 0", "--epochs must be at least 1"),
    ("demo --out {T}/o --batch-size 0", "--batch-size must be at least 1"),
    ("demo --out {T}/o --backend fast", "--backend 'fast'"),
    ("demo --out {T}/o --device tpu", "--device 'tpu'"),
    ("demo --out {F}", "--out {F}: is a file"),
    ("demo --out {T}/o --seed -1", "--seed must be at least 0"),
    ("demo --epochs 0", "--epochs must be at least 1"),  # default --out (demo_out under cwd) not created
]

# click's own errors: exit 2 with its usage text (several lines), still no traceback.
CLICK_NATIVE = [
    ("train {S} --epochs abc", "Invalid value"),
    ("synth", "Missing argument"),
    ("bench loader {S} --no-such-option", "No such option"),
]

# The reports that opened the issue, run as real processes.
REPORTED = [
    ("train {S} --out {T}/o --focal-gamma -1", "--focal-gamma must be at least 0"),
    ("train {S} --out {T}/o --epoch-len -5", "--epoch-len must be at least 1"),
    ("train {S} --out {T}/o --class-weights real=1", "--class-weights: no weight for class 'fake'"),
    ("train {S} --out {T}/o --workers -1", "--workers must be at least 0"),
    ("train {S} --out {T}/o --image-size 7", "--image-size must be at least 32"),
    ("bench loader {S} --batches 0", "--batches must be at least 1"),
]


@pytest.fixture
def places(tmp_path, monkeypatch):
    """The placeholder paths, created under tmp_path; the working directory is an empty folder inside it."""
    p = {"T": tmp_path, "S": tmp_path / "shards", "I": tmp_path / "in", "C": tmp_path / "model.pth",
         "F": tmp_path / "plain"}
    p["S"].mkdir()
    (p["S"] / "manifest.json").write_text(json.dumps({"format": "dfp-shards/1", "modality": "image"}))
    p["I"].mkdir()
    p["C"].write_bytes(b"not read before the options are checked")
    p["F"].write_text("a file")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return p


def _argv(line: str, places: dict) -> list[str]:
    return [w.format(**places) for w in line.split()]


def _tree(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def _run_main(argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["dfp", *argv])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    return exc.value.code, capsys.readouterr().err


@pytest.mark.parametrize("line,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_option_is_one_error_line_and_writes_nothing(line, needle, places, monkeypatch, capsys):
    before = _tree(places["T"])
    code, err = _run_main(_argv(line, places), monkeypatch, capsys)
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle.format(**places) in lines[0], err
    assert _tree(places["T"]) == before


@pytest.mark.parametrize("line,needle", CLICK_NATIVE, ids=[c[0] for c in CLICK_NATIVE])
def test_click_usage_errors_exit_2(line, needle, places, monkeypatch, capsys):
    before = _tree(places["T"])
    code, err = _run_main(_argv(line, places), monkeypatch, capsys)
    assert code == 2 and needle in err and "Traceback" not in err, err
    assert _tree(places["T"]) == before


def test_cuda_asked_for_where_there_is_none(places, monkeypatch, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, err = _run_main(_argv("train {S} --out {T}/o --device cuda", places), monkeypatch, capsys)
    assert code == 2 and err == "error: --device cuda: no CUDA device is available here; use --device cpu or auto\n"
    assert not (places["T"] / "o").exists()


def _subprocess(argv: list[str], cwd: Path, probe: bool = False) -> subprocess.CompletedProcess:
    """`python -m pipeline.cli ARGV`; probe: run main() in a wrapper that also prints whether torch was imported."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    code = ("import sys\nfrom pipeline import cli\nsys.argv = ['dfp', *sys.argv[1:]]\n"
            "try:\n    cli.main()\nfinally:\n    print('torch' in sys.modules)")
    cmd = [sys.executable, "-c", code, *argv] if probe else [sys.executable, "-m", "pipeline.cli", *argv]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("line,needle", REPORTED, ids=[r[0] for r in REPORTED])
def test_reported_invocations_exit_2_in_a_real_process(line, needle, places):
    before = _tree(places["T"])
    r = _subprocess(_argv(line, places), places["T"] / "cwd")
    lines = r.stderr.splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr
    assert _tree(places["T"]) == before


@pytest.mark.parametrize("line", ["--help", "train {T}/nope --epochs 0", "evaluate {C} {S} --split dev"])
def test_help_and_rejection_do_not_import_torch(line, places):
    r = _subprocess(_argv(line, places), places["T"] / "cwd", probe=True)
    assert r.stdout.strip().splitlines()[-1] == "False", (r.stdout, r.stderr)


def test_stats_plot_creates_its_folder(tmp_path, monkeypatch, capsys):
    image_tree(tmp_path / "in", 3, 2)
    plot = tmp_path / "new" / "deeper" / "stats.png"
    monkeypatch.setattr(sys, "argv", ["dfp", "stats", str(tmp_path / "in"), "--plot", str(plot)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot: {plot}" in capsys.readouterr().out


def test_raw_input_given_as_shards_is_packed_beside_it_not_into_it(tmp_path, monkeypatch, capsys):
    """The hint used to say `dfp shard INPUT mydata`: packing into the user's own data folder."""
    data = tmp_path / "mydata"
    image_tree(data, 2, 2)
    code, err = _run_main(["train", str(data), "--out", str(tmp_path / "run")], monkeypatch, capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "looks like raw input" in err, err
    suggested = err.split("`dfp shard ")[1].split("`")[0].split()
    assert suggested[0] == str(data) and Path(suggested[1]).resolve() != data.resolve(), err
    assert data.resolve() not in Path(suggested[1]).resolve().parents
