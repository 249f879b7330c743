"""dfp audit: nuisance features real vs fake, flagged when they separate the classes, quiet when they do not."""
import json
import sys

import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from typer.testing import CliRunner

from pipeline import cli
from pipeline.audit import run_audit
from pipeline.audit.audio import levels
from pipeline.audit.image import jpeg_quality
from pipeline.formats import read_manifest
from tests.factory import smooth_image

N = 60  # per class: enough for a stable cross-validated AUC on the controls


def _save(path, arr, fmt, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, fmt, **kw)


def png_fake_jpeg_real(root, n=N, seed=0):
    """Fakes: PNG, all 64x64. Reals: JPEG, many sizes and qualities. The content is alike."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        _save(root / "fake" / f"f{i:03d}.png", smooth_image(rng, 64, 64), "PNG")
        w, h = (int(v) for v in rng.integers(40, 120, 2))
        _save(root / "real" / f"r{i:03d}.jpg", smooth_image(rng, w, h), "JPEG", quality=int(rng.integers(70, 98)))
    return root


def alike_images(root, n=N, seed=0):
    """Both classes drawn from one distribution of sizes, qualities and formats."""
    rng = np.random.default_rng(seed)
    for cls in ("real", "fake"):
        for i in range(n):
            w, h = (int(v) for v in rng.integers(40, 120, 2))
            _save(root / cls / f"{cls}{i:03d}.jpg", smooth_image(rng, w, h), "JPEG", quality=int(rng.integers(70, 98)))
    return root


def _speech(rng, sr, seconds, lead):
    t = np.arange(int(sr * seconds)) / sr
    x = 0.3 * np.sin(2 * np.pi * rng.uniform(150, 400) * t) * (1 + 0.5 * np.sin(2 * np.pi * rng.uniform(1, 4) * t))
    x = x + rng.normal(0, 1e-4, len(x))
    x[: int(sr * lead)] = rng.normal(0, 1e-4, int(sr * lead))  # silence: 70 dB below the tone
    return x.astype(np.float32)


def silence_audio(root, n=N, seed=0, differ=True):
    """Reals with 0.4-0.8 s of leading silence, fakes with none (or, with differ=False, both alike)."""
    rng = np.random.default_rng(seed)
    for cls in ("real", "fake"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            lead = rng.uniform(0.4, 0.8) if (cls == "real" or not differ) else 0.0
            sf.write(root / cls / f"{cls}{i:03d}.wav", _speech(rng, 8000, 1.0 + lead, lead), 8000)
    return root


def _tree(root):
    return sorted((p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


def _run(*args):
    return CliRunner().invoke(cli.app, ["audit", *map(str, args), "--quiet"])


def test_jpeg_quality_estimate_reads_the_encoder_setting(tmp_path):
    for q in (20, 55, 75, 90, 97):
        _save(tmp_path / f"{q}.jpg", smooth_image(np.random.default_rng(q), 32, 32), "JPEG", quality=q)
        with Image.open(tmp_path / f"{q}.jpg") as im:
            assert jpeg_quality(im.quantization) == q


def test_silence_rule_measures_leading_and_trailing_silence():
    rng = np.random.default_rng(0)
    x = np.concatenate([np.zeros(2000), _speech(rng, 8000, 1.0, 0.0), np.zeros(800)])
    got = levels(x, 8000)
    assert got["leading_silence"] == pytest.approx(0.25, abs=0.011)
    assert got["trailing_silence"] == pytest.approx(0.10, abs=0.011)


@pytest.fixture(scope="module")
def png_jpeg(tmp_path_factory):
    """The PNG-fake / JPEG-real input and its shards (PNGs re-encoded, JPEGs keep their bytes)."""
    from pipeline.shards import ShardParams, build_shards
    root = tmp_path_factory.mktemp("png_jpeg")
    inp = png_fake_jpeg_real(root / "in")
    build_shards(inp, root / "shards", ShardParams(), workers=1, progress=False)
    return inp, root / "shards"


def test_png_fake_vs_jpeg_real_is_flagged_on_raw_input(png_jpeg, tmp_path):
    inp, _ = png_jpeg
    before = _tree(inp)
    res = _run(inp, "--json", tmp_path / "a.json", "--plot", tmp_path / "a.png")
    assert res.exit_code == 0, res.output
    assert _tree(inp) == before  # nothing written into the audited folder
    a = json.loads((tmp_path / "a.json").read_text())
    auc = {f["name"]: f["auc"] for f in a["features"]}
    assert auc["format"] >= 0.9 and auc["size_share"] >= 0.9 and auc["jpeg_quality"] >= 0.9
    assert {"format", "jpeg_quality", "size_share"} <= set(a["flagged"]) and a["combined_auc"] >= 0.9
    assert all(a["remedies"][n] for n in a["flagged"])
    assert {"real", "fake"} <= set(a["features"][0]) and a["fixed_sizes"]["fake"] == ["64x64"]
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    assert "flagged: " in res.output and "format" in res.output


def test_shards_are_audited_as_stored_and_as_recorded_at_packing(png_jpeg):
    _, shards = png_jpeg
    before = _tree(shards)
    s = run_audit(shards, progress=False)
    assert _tree(shards) == before
    # stored: every sample is a JPEG now, but the fakes' re-encoding differs from the reals' kept bytes
    assert {f["name"]: f for f in s["features"]}["format"]["auc"] == 0.5
    assert s["combined_auc"] >= 0.9 and "jpeg_quality" in s["flagged"]
    src = s["source_metadata"]
    assert "source_orig_format" in src["flagged"] and src["combined_auc"] >= 0.9


def test_stats_and_train_show_the_headline(png_jpeg):
    from pipeline.audit import train_audit
    inp, shards = png_jpeg
    res = CliRunner().invoke(cli.app, ["stats", str(inp)])
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if x.startswith("Shortcut audit"))
    assert "flagged: " in line and "format" in line
    assert "Shortcut audit" not in CliRunner().invoke(cli.app, ["stats", str(inp), "--no-audit"]).output
    said = []
    rec = train_audit(shards, said.append)
    assert len(said) == 1 and said[0].startswith("warning: shortcut audit") and "jpeg_quality" in said[0]
    assert rec["n"] == read_manifest(shards)["splits"]["train"]  # the train split only
    assert "jpeg_quality" in rec["flagged"] and rec["combined_auc"] >= 0.9
    from pipeline.report.html import render_html
    from pipeline.report.text import summary_text
    text = summary_text({}, {"shortcut_audit": rec})
    assert "SHORTCUT AUDIT" in text and any("jpeg_quality" in x and "FLAG" in x for x in text.splitlines())
    assert "<h2>Shortcut audit</h2>" in render_html("r", {}, {"shortcut_audit": rec}, {}, text)
    assert "SHORTCUT AUDIT" not in summary_text({}, {})


@pytest.mark.slow
def test_long_vs_no_leading_silence_is_flagged_on_input_and_on_shards(tmp_path):
    from pipeline.shards import ShardParams, build_shards
    inp = silence_audio(tmp_path / "in")
    build_shards(inp, tmp_path / "shards", ShardParams(), workers=1, progress=False)
    for where in (inp, tmp_path / "shards"):  # the packer resamples and re-encodes, the silence stays
        a = run_audit(where, progress=False)
        auc = {f["name"]: f["auc"] for f in a["features"]}
        assert auc["leading_silence"] >= 0.9 and "leading_silence" in a["flagged"] and a["combined_auc"] >= 0.9
        assert auc["sample_rate"] == 0.5
    assert "source_duration" in a["source_metadata"]["flagged"]  # the fakes are shorter by the silence


@pytest.mark.parametrize("make", [alike_images, lambda root: silence_audio(root, differ=False)], ids=["image", "audio"])
def test_controls_that_differ_by_nothing_are_not_flagged(tmp_path, make):
    a = run_audit(make(tmp_path / "in"), progress=False)
    assert a["flagged"] == [] and a["combined_auc"] <= 0.7, (a["combined_auc"], a["flagged"])


def _main(argv, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["dfp", "audit", *map(str, argv), "--quiet"])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    out = capsys.readouterr()
    return exc.value.code, out.err + out.out


def test_bad_input_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "unlabelled").mkdir()
    _save(tmp_path / "unlabelled" / "x" / "a.jpg", smooth_image(np.random.default_rng(0), 16, 16), "JPEG")
    one = tmp_path / "one"
    _save(one / "real" / "a.jpg", smooth_image(np.random.default_rng(0), 16, 16), "JPEG")
    for argv in ([tmp_path / "missing"], [tmp_path / "unlabelled"], [one], [one, "--json", one / "out.json"]):
        code, out = _main(argv, monkeypatch, capsys)
        assert code == 2 and len(out.strip().splitlines()) == 1 and out.startswith("error: "), (argv, out)
    assert sorted(p.name for p in one.rglob("*")) == ["a.jpg", "real"]  # the refused --json was not written


def test_video_frame_rate_is_read_from_the_headers_and_flagged(tmp_path):
    from tests.factory import write_video
    for i in range(10):
        write_video(tmp_path / "in" / "real" / f"r{i}.mp4", frames=4, fps=10, seed=i)
        write_video(tmp_path / "in" / "fake" / f"f{i}.mp4", frames=4, fps=25, seed=50 + i)
    a = run_audit(tmp_path / "in", progress=False)
    auc = {f["name"]: f["auc"] for f in a["features"]}
    assert "frame_rate" in a["flagged"] and auc["codec"] == 0.5 and auc["width"] == 0.5
