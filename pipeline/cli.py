"""The `dfp` command line: each command parses options, builds a config and calls one function.

Exit codes: 0 success, 1 a check failed, 2 bad input or arguments (one line, no traceback).
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import sys
import typing
from pathlib import Path
from typing import List, Optional

import typer

from . import validate as v
from .config import (BATCH_HELP, CACHE_DIR_HELP, CACHE_LIMIT_HELP, DEVICE_HELP, MODEL_HELP, SHARDS_HELP, SIZE,
                     SIZE_HELP, ShardParams, TrainConfig, parameter_name)
from .errors import InputError, UsageError, exit_code
from .names import BACKENDS, COMPRESSIONS, DATASETS, LOSSES, MODALITIES, SAMPLINGS, SPLITS

# Every backbone downsamples 32x: below 32 px its last feature map is padding around less than one cell,
# so training runs without error and learns nothing.
MIN_IMAGE_SIZE = 32
JSON_OUT_HELP = "also write the results to this JSON file (default: text only)"
CKPT_HELP = "a run's best_model.pth, or the run folder holding it"
EVAL_BACKEND_HELP = "loader: auto (the checkpoint's), dali or torch"

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train deepfake detectors on imbalanced data: shards, loaders, trainer, thresholds, reports.")
bench_app = typer.Typer(no_args_is_help=True, help="Throughput benchmarks (JSON with --json).")
app.add_typer(bench_app, name="bench")


def _switches_show_no_value() -> None:
    """Typer's help prints a value type after every option, `<bool>` after a switch too, as if `--quiet` took a
    value: a switch shows none. (Typers without `display_type_rich` print switches without a type already.)"""
    from typer.core import TyperOption
    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None:
        return

    def display_type_rich(self, ctx):
        return None if self.is_flag else shown(self, ctx)
    TyperOption.display_type_rich = display_type_rich


_switches_show_no_value()


def _echo_err(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)


# ---------------------------------------------------------------- options built from config.py's fields
def _param(name: str, annotation, info) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation)


def _field_param(f: dataclasses.Field, hint) -> inspect.Parameter:
    """The command-line parameter of one config field, as its metadata (config.option) declares it."""
    m = f.metadata
    default = ... if f.default is dataclasses.MISSING else f.default
    if m["path"]:
        hint = Optional[Path] if default is None else Path
        default = Path(default) if isinstance(default, str) else default
    if m["negate"]:
        return _param(parameter_name(f), bool, typer.Option(not default, m["flag"], help=m["help"]))
    if m["argument"]:
        return _param(f.name, hint, typer.Argument(default, metavar=m["metavar"], help=m["help"]))
    return _param(f.name, hint, typer.Option(default, m["flag"], metavar=m["metavar"], help=m["help"]))


def _config_params(cls, head=(), after: Optional[dict] = None, tail=()) -> list[inspect.Parameter]:
    """`head`, one parameter per field of `cls` (each followed by the parameters `after` lists for it), `tail`."""
    hints, after = typing.get_type_hints(cls), after or {}
    fields = [p for f in dataclasses.fields(cls) for p in (_field_param(f, hints[f.name]), *after.get(f.name, ()))]
    return [*head, *fields, *tail]


def _takes(*params: inspect.Parameter):
    """The command's parameters, as Typer reads them (inspect.signature): `params`, after a typer.Context
    parameter where the function's first one is annotated so."""
    def wrap(fn):
        first = next(iter(inspect.signature(fn, eval_str=True).parameters.values()))
        ctx = [first] if first.annotation is typer.Context else []
        fn.__signature__ = inspect.Signature([*ctx, *params])
        return fn
    return wrap


def _option_names(cls) -> dict[str, str]:
    """The command-line parameter of each field of `cls`, by name: `quiet` for `progress`, else the field's own."""
    return {parameter_name(f): f.name for f in dataclasses.fields(cls)}


def _config_from(cls, args: dict):
    """`cls` from a command's parameter values (config.option metadata read back); the others are left out."""
    values = {}
    for name, field_name in _option_names(cls).items():
        meta, value = cls.__dataclass_fields__[field_name].metadata, args[name]
        if meta["negate"]:
            value = not value
        elif meta["path"] and value is not None:
            value = str(value)
        values[field_name] = value
    return cls(**values)


@app.command()
def synth(out: Path = typer.Argument(..., metavar="OUT", help="output folder (OUT/real, OUT/fake)"),
          modality: str = typer.Option("image", help="image, audio or video"),
          n_real: int = typer.Option(300, help="number of real samples"),
          n_fake: int = typer.Option(100, help="number of fake samples"),
          seed: int = typer.Option(0, help="seed for the content, sizes and artifacts"),
          image_size: Optional[str] = typer.Option(None, metavar=SIZE, help="every image this size: N (square) or WxH, "
                                                   "e.g. 512x384 (default: each its own, 96 to 256 px a side)")):
    """Write a synthetic labeled dataset whose fakes carry learnable, non-trivial artifacts."""
    v.choice("modality", modality, MODALITIES)
    v.minimum(1, n_real=n_real, n_fake=n_fake)
    v.minimum(0, seed=seed)
    size = v.image_size_wxh(image_size, modality)
    v.output("OUT", out, "dir")
    from .synth import synth_dataset
    try:
        res = synth_dataset(out, modality, n_real, n_fake, seed, image_size=size, progress=True)
    except ValueError as e:
        raise UsageError(str(e)) from None
    typer.echo(f"wrote {res['real']} real and {res['fake']} fake {modality} files to {out}")


_SHARD_PARAMS = _config_params(
    ShardParams,
    head=[_param("input_dir", Path, typer.Argument(..., metavar="INPUT", help="folder with real/ and fake/ (or "
                                                   "train|val|test/real|fake); with --merge, the first part folder")),
          _param("out", Optional[str], typer.Argument(None, metavar="OUT", help="output shard folder, or an s3:// or "
                                                      "gs:// URL (built in a temporary folder, then uploaded, the "
                                                      "manifest last) (default: shards/data); with --part, this "
                                                      "part's folder; with --merge, the second part folder")),
          _param("more_parts", Optional[List[Path]], typer.Argument(None, metavar="PART_DIR", help="with --merge: the "
                                                                    "further part folders (default: none)"))],
    after={"seed": [_param("workers", Optional[int], typer.Option(None, help="decode processes (default: all "
                                                                              "cores)"))]},
    tail=[_param("part", Optional[str], typer.Option(None, metavar="K/N", help="pack on N machines: prepare this "
                                                     "machine's share K (1 to N) of INPUT into OUT, a part folder, "
                                                     "for --merge (default: pack all of INPUT here)")),
          _param("merge", Optional[Path], typer.Option(None, metavar="OUT", help="write the shards into OUT from the N "
                                                       "part folders given as arguments (dfp shard --merge OUT "
                                                       "PART_DIR...; the options come from the parts), as one "
                                                       "machine would have (default: no merge)")),
          _param("quiet", bool, typer.Option(False, help="no progress bar"))])


@app.command()
@_takes(*_SHARD_PARAMS)
def shard(**a) -> None:
    """Pack INPUT into class-labeled WebDataset shards with a manifest, .idx files and rejects.jsonl."""
    if a["merge"] is not None:
        _refuse_packing_options(a)
        parts = [a["input_dir"], *([Path(a["out"])] if a["out"] else []), *(a["more_parts"] or [])]
        return _merge_parts(a["merge"], parts, a["part"], a["quiet"])
    if a["more_parts"]:
        raise UsageError(f"unexpected argument {a['more_parts'][0]}: dfp shard takes INPUT and OUT "
                         "(part folders only with --merge OUT)")
    out = a["out"] or "shards/data"
    _check_shard(a, out)
    _pack(a["input_dir"], out, _config_from(ShardParams, a), a["part"], a["workers"], progress=not a["quiet"])


def _refuse_packing_options(a: dict) -> None:
    """--merge writes the parts as they were packed, with the options in their part.json: a packing option given
    to it would change nothing, so it is refused rather than silently dropped."""
    given = [f.name for f in dataclasses.fields(ShardParams) if a[f.name] != f.default]
    given += ["workers"] if a["workers"] is not None else []
    if given:
        flags = ", ".join("--" + n.replace("_", "-") for n in given)
        raise UsageError(f"{flags}: --merge takes every packing option from the parts' part.json; give them to "
                         "each --part run instead, and --merge only OUT and the part folders")


def _check_shard(a: dict, out: str) -> None:
    """a: dfp shard's parameters; out: OUT or its default."""
    from .storage import is_url
    if a["part"] is not None and is_url(out):
        raise UsageError(f"--part writes a part folder for --merge on local or shared disk; give a folder, not {out}")
    _check_shard_args(a["input_dir"], out, a["modality"], a["split"], a["class_map"], a["check"])
    _check_dataset_args(a["dataset"], a["protocol"], a["val_fraction"], a["ff_compression"])
    _check_face_args(a["faces"], a["modality"], a["face_margin"], a["face_size"], a["face_quality"])
    _check_storage_args(a["faces"], a["jpeg_quality"], a["chroma"], a["resize_rule"], a["image_codec"], a["fps"])
    v.minimum(1, **_pick(a, "max_count", "max_size", "frames", "sample_rate", "workers", "max_samples_per_class"))
    v.minimum(0, **_pick(a, "seed", "group_depth"))
    v.minimum(16, max_side=a["max_side"])
    v.minimum(0, **_pick(a, "max_pixels", "max_seconds"))


def _pack(input_dir: Path, out: str, params: ShardParams, part: Optional[str], workers: Optional[int],
          progress: bool) -> None:
    """One machine's share (--part K/N) or the whole of INPUT, into a folder or to a URL."""
    from .storage import is_url
    if part is not None:
        from .parts import format_part_summary, pack_part, parse_part
        typer.echo(format_part_summary(pack_part(input_dir, out, params, parse_part(part), workers=workers,
                                                 progress=progress)))
        return
    from .shards import build_shards, format_summary
    if is_url(out):
        from .upload import build_and_upload
        summary = build_and_upload(input_dir, out, params, workers=workers, progress=progress)
    else:
        summary = build_shards(input_dir, out, params, workers=workers, progress=progress)
    typer.echo(format_summary(summary))
    typer.echo(f"shards: {out}")


def _shards_or_input(path: str) -> bool:
    """SHARDS_OR_INPUT: a local folder, or the URL of a shard set (whose manifest is read). True for a URL."""
    from .storage import is_url
    if is_url(path):
        v.shards(path, "SHARDS_OR_INPUT")
        return True
    v.existing("SHARDS_OR_INPUT", Path(path), "dir")
    return False


def _merge_parts(out: Path, part_dirs: List[Path], part: Optional[str], quiet: bool) -> None:
    if part is not None:
        raise UsageError("--part and --merge: give --part K/N to each machine's packing, --merge once to join them")
    v.output("--merge", out, "dir")
    for d in part_dirs:
        v.existing("PART_DIR", d, "dir")
    from .parts import merge_parts
    from .shards import format_summary
    typer.echo(format_summary(merge_parts(out, part_dirs, progress=not quiet)))
    typer.echo(f"shards: {out}")


def _check_shard_args(input_dir: Path, out: str, modality: str, split: str, class_map: Optional[str], check: str) -> None:
    from .media.image import CHECKS
    from .datasets.sources import parse_class_map, parse_split
    from .storage import is_url
    v.existing("INPUT", input_dir, "dir")
    if not is_url(out):
        v.output("OUT", Path(out), "dir")
    v.choice("modality", modality, ("auto", *MODALITIES))
    v.choice("check", check, CHECKS)
    try:
        parse_split(split)
        parse_class_map(class_map)
    except InputError as e:
        raise UsageError(str(e)) from None


def _check_dataset_args(dataset: str, protocol: Optional[Path], val_fraction: float, ff_compression: str) -> None:
    v.choice("dataset", dataset, DATASETS)
    v.existing("--protocol", protocol)
    if not 0 <= val_fraction < 1:
        raise UsageError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    v.choice("ff_compression", ff_compression, COMPRESSIONS)


def _check_face_args(faces: bool, modality: str, margin: float, size: int, quality: int) -> None:
    if faces and modality == "audio":
        raise UsageError("--faces applies to image and video input, not --modality audio")
    v.minimum(1.0, face_margin=margin)
    v.minimum(MIN_IMAGE_SIZE, face_size=size)
    v.minimum(1, face_quality=quality)
    if quality > 100:
        raise UsageError(f"--face-quality must be at most 100, got {quality}")


def _check_storage_args(faces: bool, quality: Optional[int], chroma: Optional[str], rule: Optional[str],
                        codec: str, fps: Optional[float]) -> None:
    from .media.image import CHROMA, CODECS, RESIZE_RULES
    v.choice("image_codec", codec, CODECS)
    if chroma is not None:
        v.choice("chroma", chroma, CHROMA)
    if rule is not None:
        v.choice("resize_rule", rule, RESIZE_RULES)
    v.minimum(1, jpeg_quality=quality)
    v.positive(fps=fps)
    if quality is not None and quality > 100:
        raise UsageError(f"--jpeg-quality must be at most 100, got {quality}")
    if codec == "png" and (quality is not None or chroma is not None):
        raise UsageError("--jpeg-quality and --chroma apply to --image-codec jpeg, not png")
    if faces and codec == "png":
        raise UsageError("--faces stores JPEG crops (--face-quality); leave out --image-codec png")


@app.command()
def verify(shards: str = typer.Argument(..., metavar="SHARDS", help=SHARDS_HELP),
           quiet: bool = typer.Option(False, help="no progress bar")):
    """Re-read every shard: checksums, counts, index files, decode every sample. Exit 1 on any mismatch."""
    from .storage import is_url
    if is_url(shards):
        v.shards(shards)
        from .remote_verify import verify_url
        problems, seen = verify_url(shards, progress=not quiet)
    else:
        v.existing("SHARDS", Path(shards), "dir")
        from .verify import verify_shards
        problems, seen = verify_shards(shards, progress=not quiet)
    if problems:
        typer.echo(f"FAILED: {len(problems)} problem(s) in {shards}", err=True)
        for p in problems:
            typer.echo(f"  {p}", err=True)
        raise typer.Exit(1)
    n = sum(sum(v.values()) for v in seen.values())
    typer.echo(f"OK: {n} samples in {shards} verified (checksums, counts, index files, decoding)")


@app.command()
def stats(path: str = typer.Argument(..., metavar="SHARDS_OR_INPUT", help="a shard folder or its URL, or raw input as for dfp shard"),
          plot: Optional[Path] = typer.Option(None, help="write a bar chart PNG here (default: none)"),
          as_json: bool = typer.Option(False, "--json", help="print JSON instead of text"),
          class_map: Optional[str] = typer.Option(None, help="as for dfp shard (raw input only)"),
          dataset: str = typer.Option("folders", help="as for dfp shard (raw input only)"),
          protocol: Optional[Path] = typer.Option(None, help="as for dfp shard (raw input only)"),
          split: str = typer.Option("0.8,0.1,0.1", help="as for dfp shard (raw input only)"),
          val_fraction: float = typer.Option(0.1, help="as for dfp shard (raw input only)"),
          ff_compression: str = typer.Option("c23", help="as for dfp shard (raw input only)"),
          modality: str = typer.Option("auto", help="as for dfp shard (raw input only)"),
          seed: int = typer.Option(0, help="as for dfp shard (raw input only)"),
          max_samples_per_class: Optional[int] = typer.Option(None, help="as for dfp shard (raw input only)"),
          group_depth: int = typer.Option(0, help="as for dfp shard (raw input only)"),
          audit: bool = typer.Option(True, "--audit/--no-audit", help="also show the shortcut audit's headline, from at "
                                     "most 200 files per class (default: on; dfp audit for the full table)")):
    """Counts per split, class and attack, imbalance ratio, severity and recommended techniques.

    On a raw INPUT: what `dfp shard` with the same options would pack, before packing (files that fail to
    decode, and faceless files with --faces, are found only by packing)."""
    from .datasets.sources import parse_class_map, parse_split
    _shards_or_input(path)
    v.output("--plot", plot, "file")
    _check_dataset_args(dataset, protocol, val_fraction, ff_compression)
    v.choice("modality", modality, ("auto", *MODALITIES))
    v.minimum(1, max_samples_per_class=max_samples_per_class)
    v.minimum(0, seed=seed, group_depth=group_depth)
    try:
        parse_class_map(class_map)
        parse_split(split)
    except InputError as e:
        raise UsageError(str(e)) from None
    from .stats import dataset_stats, format_stats, json_safe
    st = dataset_stats(path, params=ShardParams(class_map=class_map, dataset=dataset, split=split,
                                                protocol=str(protocol) if protocol else None,
                                                val_fraction=val_fraction, ff_compression=ff_compression,
                                                modality=modality, seed=seed, group_depth=group_depth,
                                                max_samples_per_class=max_samples_per_class))
    if audit:
        from .audit import stats_headline
        st["audit"] = stats_headline(path, ShardParams(class_map=class_map, dataset=dataset, modality=modality,
                                                       protocol=str(protocol) if protocol else None,
                                                       group_depth=group_depth, ff_compression=ff_compression,
                                                       seed=seed, max_samples_per_class=max_samples_per_class))
    if plot:
        from .atomic import write_bytes
        from .report import plot_dataset_stats, png_bytes
        plot.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(plot, png_bytes(plot_dataset_stats(st["splits"], st["modality"])))
    if as_json:
        typer.echo(json.dumps(json_safe(st), indent=2))
    else:
        typer.echo(format_stats(st))
        if plot:
            typer.echo(f"plot: {plot}")


@app.command()
def audit(path: str = typer.Argument(..., metavar="SHARDS_OR_INPUT", help="a shard folder or its URL, or raw input as for dfp shard"),
          max_per_class: int = typer.Option(2000, help="audit at most N files per class (a seeded draw)"),
          flag_at: float = typer.Option(0.8, help="flag features whose real-vs-fake AUC is at least this"),
          json_out: Optional[Path] = typer.Option(None, "--json", help=JSON_OUT_HELP),
          plot: Optional[Path] = typer.Option(None, help="write a bar chart of the feature AUCs here (PNG; default: none)"),
          class_map: Optional[str] = typer.Option(None, help="as for dfp shard (raw input only)"),
          dataset: str = typer.Option("folders", help="as for dfp shard (raw input only)"),
          protocol: Optional[Path] = typer.Option(None, help="as for dfp shard (raw input only)"),
          modality: str = typer.Option("auto", help="as for dfp shard (raw input only)"),
          group_depth: int = typer.Option(0, help="as for dfp shard (raw input only)"),
          ff_compression: str = typer.Option("c23", help="as for dfp shard (raw input only)"),
          seed: int = typer.Option(0, help="seed for the per-class draw and the cross-validation"),
          workers: Optional[int] = typer.Option(None, help="header-reading processes (default: all cores)"),
          augmentation: bool = typer.Option(False, "--augmentation", help="shards only: also draw training batches "
                                            "through the real loader and measure how well augmentation traces tell "
                                            "the classes apart (trace AUC; default: off)"),
          backend: str = typer.Option("auto", help="--augmentation: loader backend, auto, dali or torch"),
          device: str = typer.Option("auto", help=DEVICE_HELP),
          batches: int = typer.Option(16, help="--augmentation: training batches drawn"),
          batch_size: int = typer.Option(32, help=BATCH_HELP + " (--augmentation)"),
          image_size: int = typer.Option(224, metavar=SIZE, help=SIZE_HELP + " (--augmentation)"),
          quiet: bool = typer.Option(False, help="no progress bar")):
    """Shortcut audit: properties that should not carry the label (format, JPEG quality, size, silence, sample
    rate, codec, ...), one AUC each real vs fake, and a grouped cross-validated classifier over all of them.
    Reads only: nothing is written into the audited folder."""
    _check_audit(locals())
    from .audit import format_audit, run_audit
    params = ShardParams(class_map=class_map, dataset=dataset, protocol=str(protocol) if protocol else None,
                         modality=modality, group_depth=group_depth, ff_compression=ff_compression, seed=seed)
    result = run_audit(path, params, max_per_class=max_per_class, flag_at=flag_at, seed=seed, progress=not quiet,
                       workers=workers)
    if augmentation:
        from .audit import augmentation_report
        result["augmentation"] = augmentation_report(path, backend, device, batches, batch_size, image_size, seed)
    _write_audit(result, json_out, plot)
    typer.echo(format_audit(result))


def _check_audit(a: dict) -> None:
    """a: the audit command's parameters."""
    remote = _shards_or_input(a["path"])
    for label, out in (("--json", a["json_out"]), ("--plot", a["plot"])):
        v.output(label, out, "file")
        if out is not None and not remote and Path(a["path"]).resolve() in out.resolve().parents:
            raise UsageError(f"{label} {out}: inside the audited folder {a['path']}; dfp audit writes nothing there, "
                             "give a path outside it")
    _check_dataset_args(a["dataset"], a["protocol"], 0.1, a["ff_compression"])
    v.choice("modality", a["modality"], ("auto", *MODALITIES))
    v.minimum(1, **_pick(a, "max_per_class", "workers"))
    v.minimum(0, **_pick(a, "seed", "group_depth"))
    if not 0.5 <= a["flag_at"] <= 1:
        raise UsageError(f"--flag-at must be in [0.5, 1], got {a['flag_at']}")
    if a["augmentation"]:
        v.shards(a["path"])
        v.choice("backend", a["backend"], BACKENDS)
        v.device(a["device"])
        v.minimum(1, **_pick(a, "batches", "batch_size"))
        v.minimum(MIN_IMAGE_SIZE, image_size=a["image_size"])
    try:
        from .datasets.sources import parse_class_map
        parse_class_map(a["class_map"])
    except InputError as e:
        raise UsageError(str(e)) from None


def _write_audit(result: dict, json_out: Optional[Path], plot: Optional[Path]) -> None:
    from .atomic import write_bytes, write_json
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        write_json(json_out, result)
    if plot:
        from .audit import plot_aucs
        plot.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(plot, plot_aucs(result))


# dfp train's options that are not TrainConfig fields, by the field each follows in --help
_TRAIN_PARAMS = _config_params(TrainConfig, after={
    "amp": [_param("no_amp", bool, typer.Option(False, "--no-amp", help="fp32 everywhere (same as --amp off)"))],
    "resume": [_param("overwrite", bool, typer.Option(False, "--overwrite", help="--out holds a run: move it aside to "
                                                      "OUT.old-TIME (printed) and start a new one there (default: "
                                                      "refuse)"))]})
# the field a non-field option sets
_TRAIN_FIELD = {"no_amp": "amp"}


def _given(ctx: typer.Context) -> set[str]:
    """The TrainConfig fields the user set on the command line (a resumed run applies or refuses exactly these)."""
    sources = {n: getattr(ctx.get_parameter_source(n), "name", "") for n in ctx.params}
    fields = _option_names(TrainConfig) | _TRAIN_FIELD
    return {fields.get(n, n) for n, src in sources.items() if src in ("COMMANDLINE", "ENVIRONMENT")}


def _pick(args: dict, *names: str) -> dict:
    return {n: args[n] for n in names}


def _check_train(a: dict) -> None:
    """a: the train command's parameters.

    Cheap checks come first; torch is imported (for the device and the model names) only once they pass."""
    v.minimum(1, **_pick(a, "epochs", "batch_size", "epoch_len", "max_samples_per_class"))
    v.minimum(0, **_pick(a, "seed", "workers", "patience", "save_every", "weight_decay", "focal_gamma",
                         "warmup_epochs"))
    v.minimum(MIN_IMAGE_SIZE, image_size=a["image_size"])
    v.positive(**_pick(a, "lr", "audio_seconds", "clip"))
    for name, choices in (("backend", BACKENDS), ("strategy", ("auto", "manual")), ("loss", LOSSES),
                          ("amp", ("auto", "bf16", "fp16", "off")), ("sampling", SAMPLINGS)):
        v.choice(name, a[name], choices)
    v.focal_alpha(a["focal_alpha"])
    v.class_weights(a["class_weights"])
    v.threshold_method(a["threshold_method"])
    v.probe(a["freeze_backbone"], a["unfreeze_last"], a["cache_embeddings"], a["cache_views"])
    v.shards(a["shards"])
    v.cache(a["cache_dir"], a["cache_limit"])
    from .backbones import is_ssl
    v.existing("--weights", a["weights"], "any" if is_ssl(a["model"]) else "file")  # a Hugging Face folder
    v.output("--out", a["out"], "dir")
    if a["overwrite"] and a["resume"]:
        raise UsageError("--overwrite starts a new run; --resume continues one: give one of them")
    v.device(a["device"])
    v.model_name(a["model"])
    v.model_name(a["frame_backbone"], ("image",), "frame_backbone")


@app.command()
@_takes(*_TRAIN_PARAMS)
def train(ctx: typer.Context, **a) -> None:
    """Train a real/fake detector and write the run directory (works under torchrun)."""
    _check_train(a)
    if a["no_amp"]:
        a["amp"] = "off"
    from .train import run_training
    run_training(_config_from(TrainConfig, a), given=_given(ctx), overwrite=a["overwrite"])


def _use_cache(cache_dir: Optional[Path], cache_limit: str) -> None:
    """--cache-dir and --cache-limit for every loader this command builds on shards at a URL."""
    v.cache(cache_dir, cache_limit)
    from .loaders.remote import set_cache
    from .shardcache import parse_size
    set_cache(str(cache_dir) if cache_dir else None, parse_size(cache_limit))


def _check_model_run(ckpt: Path, shards: str, device: str, backend: str, batch_size: int) -> Path:
    """The options evaluate and tune share; returns the checkpoint file CKPT stands for."""
    v.minimum(1, batch_size=batch_size)
    v.choice("backend", backend, BACKENDS)
    ckpt = v.checkpoint(ckpt)
    v.shards(shards)
    v.device(device)
    return ckpt


@app.command()
def evaluate(ckpt: Path = typer.Argument(..., metavar="CKPT", help=CKPT_HELP),
             shards: List[str] = typer.Argument(..., metavar="SHARDS", help="shard folder(s) or URL(s); several "
                                                "give a cross-dataset table at the checkpoint's threshold"),
             split: str = typer.Option("test", help="train, val or test"),
             out: Optional[Path] = typer.Option(None, help="output folder (default: RUN/eval/SET-SPLIT beside the "
                                                "checkpoint, SET being the shard folder's name; SET-HASH-SPLIT "
                                                "when that folder holds another evaluation); with several SHARDS "
                                                "OUT/SET-SPLIT each and OUT/cross_dataset.json and .md (default: "
                                                "RUN/eval/cross_dataset-SPLIT.json and .md)"),
             device: str = typer.Option("auto", help=DEVICE_HELP),
             backend: str = typer.Option("auto", help=EVAL_BACKEND_HELP),
             batch_size: int = typer.Option(64, help=BATCH_HELP),
             cache_dir: Optional[Path] = typer.Option(None, help=CACHE_DIR_HELP),
             cache_limit: str = typer.Option("20G", metavar="BYTES", help=CACHE_LIMIT_HELP)):
    """Metrics at 0.5 and at the stored threshold, predictions, plots and a report naming the checkpoint, the
    shard set and the split; several shard sets also give one cross-dataset table. Re-running the same
    evaluation replaces its own folder, never another's."""
    v.choice("split", split, SPLITS)
    v.output("--out", out, "dir")
    ckpt = _check_model_run(ckpt, shards[0], device, backend, batch_size)
    v.shard_sets(shards)
    _use_cache(cache_dir, cache_limit)
    if len(shards) > 1:
        from .crossdata import cross_evaluate
        cross_evaluate(ckpt, shards, split, out, device, backend, batch_size)
        return
    from .evaluate import evaluate as run
    run(ckpt, shards[0], split, out, device, backend, batch_size)


@app.command()
def tune(ckpt: Path = typer.Argument(..., metavar="CKPT", help=CKPT_HELP),
         shards: str = typer.Argument(..., metavar="SHARDS", help=SHARDS_HELP + " (its val split is used)"),
         method: str = typer.Option("f1", help="f1, youden, eer, precision:P or recall:R"),
         device: str = typer.Option("auto", help=DEVICE_HELP),
         backend: str = typer.Option("auto", help=EVAL_BACKEND_HELP),
         batch_size: int = typer.Option(64, help=BATCH_HELP),
         cache_dir: Optional[Path] = typer.Option(None, help=CACHE_DIR_HELP),
         cache_limit: str = typer.Option("20G", metavar="BYTES", help=CACHE_LIMIT_HELP)):
    """Re-tune the decision threshold on the val split and store it in the checkpoint (the previous one goes
    to its threshold_history); the run's metrics.json, training_results.txt, report.html and plots, and its
    RUN/eval/* folders, follow; prints the test split's metrics at the new threshold."""
    v.threshold_method(method, "method")
    ckpt = _check_model_run(ckpt, shards, device, backend, batch_size)
    _use_cache(cache_dir, cache_limit)
    from .evaluate import tune as run
    from .lock import held
    with held(ckpt.parent, "the folder of CKPT"):  # tune rewrites the checkpoint; a run may be writing it
        run(ckpt, shards, method, device, backend, batch_size)


@app.command()
def report(run: Path = typer.Argument(..., metavar="RUN", help="run directory")):
    """Re-render plots, training_results.txt and report.html from a run's saved files (no model needed)."""
    v.existing("RUN", run, "dir")
    from .report import render_report
    if not any((run / f).exists() for f in ("metrics.json", "predictions_val.csv", "history.csv")):
        raise UsageError(f"{run} has no metrics.json, predictions or history.csv: is it a dfp run directory?")
    from .lock import held
    with held(run, "RUN"):
        written = render_report(run)
    typer.echo(f"wrote {len(written)} files; open {run / 'report.html'}")


@app.command("metrics")
def metrics_cmd(
        scores: Path = typer.Argument(..., metavar="SCORES",
                                      help="CSV with label and score columns (optional group, attack, key)"),
        val: Optional[Path] = typer.Option(None, help="val CSV: threshold tuned and LLR calibrated on it, then "
                                           "applied unchanged to SCORES (default: none; threshold 0.5, LLR = logit)"),
        threshold: Optional[float] = typer.Option(None, help="apply this threshold (default: tuned on --val, else 0.5)"),
        method: str = typer.Option("f1", help="threshold method on --val: f1, youden, eer, precision:P or recall:R"),
        dcf: str = typer.Option("0.05,1,10", help="ASVspoof 5 cost model P_SPOOF,C_MISS,C_FA"),
        json_out: Optional[Path] = typer.Option(None, "--json", help="write the split block here (JSON; default: not written)"),
        out: Optional[Path] = typer.Option(None, help="folder for metrics.json, predictions, plots, report.html "
                                           "(default: none)"),
        export_asvspoof5: Optional[Path] = typer.Option(None, help="ASVspoof 5 score file (bona fide LLR, higher = "
                                                        "more bona fide), key file beside it (cm.tsv: cm_keys.tsv; default: none)")):
    """Metrics of any score file, computed by the code dfp train uses (same console table, same JSON block)."""
    v.existing("SCORES", scores, "file")
    v.existing("--val", val, "file")
    v.minimum(-float("inf"), threshold=threshold)  # any finite number
    v.threshold_method(method, "method")
    from .dcf import parse_costs
    try:
        costs = parse_costs(dcf)
    except ValueError as e:
        raise UsageError(f"--dcf {e}") from None
    v.output("--json", json_out, "file")
    v.output("--out", out, "dir")
    v.output("--export-asvspoof5", export_asvspoof5, "file")
    from .scorefile import run
    run(scores, val, threshold, method, costs, json_out, out, export_asvspoof5, log=typer.echo)


@app.command()
def predict(ckpt: Path = typer.Argument(..., metavar="CKPT", help=CKPT_HELP),
            paths: List[Path] = typer.Argument(..., metavar="PATHS", help="files and folders of raw images, audio or video"),
            out: Path = typer.Option(Path("preds.csv"), help="CSV: path,score,label,error"),
            device: str = typer.Option("auto", help=DEVICE_HELP), batch_size: int = typer.Option(32, help=BATCH_HELP),
            backend: str = typer.Option("auto", help="loader: auto (the checkpoint's, as evaluate uses), dali or torch"),
            workers: int = typer.Option(2, help="loader worker processes (torch backend)"),
            max_pixels: int = typer.Option(100_000_000, help="pictures and video frames over this many pixels get an error row, undecoded (0: no limit)"),
            max_seconds: float = typer.Option(3600.0, help="audio and video longer than this get an error row, undecoded (0: no limit)")):
    """Score raw files with the stored threshold; unreadable files get a row with an error."""
    v.minimum(1, batch_size=batch_size)
    ckpt = v.checkpoint(ckpt)
    for p in paths:
        v.existing("PATHS", p)
    v.output("--out", out, "file")
    v.device(device)
    v.choice("backend", backend, BACKENDS)
    v.minimum(0, workers=workers, max_pixels=max_pixels, max_seconds=max_seconds)
    from .predict import predict_files
    predict_files(ckpt, paths, out, device, batch_size, backend, workers, max_pixels=max_pixels, max_seconds=max_seconds)


@bench_app.command("shard")
def bench_shard_cmd(input_dir: Path = typer.Argument(..., metavar="INPUT", help="raw input folder, as for dfp shard"),
                    json_out: Optional[Path] = typer.Option(None, "--json", help=JSON_OUT_HELP),
                    workers: Optional[int] = typer.Option(None, help="decode processes (default: all cores)"),
                    faces: bool = typer.Option(False, "--faces", help="also time `dfp shard --faces` (face crops/s)")):
    """Packing throughput (files/s, MB/s) beside `tar cf` of the same files."""
    v.minimum(1, workers=workers)
    v.existing("INPUT", input_dir, "dir")
    v.output("--json", json_out, "file")
    from .bench import bench_shard, format_table, machine
    res = {"machine": machine(), "shard": bench_shard(input_dir, workers, faces=faces)}
    _emit(res, json_out, format_table(res))


def _check_bench_run(shards: str, device: str, batch_size: int, batches: int, image_size: int,
                     json_out: Optional[Path], raw: bool = False) -> None:
    """The options bench loader and bench train share; raw: SHARDS is a raw input folder (the seed's way)."""
    v.minimum(1, batch_size=batch_size, batches=batches)
    v.minimum(MIN_IMAGE_SIZE, image_size=image_size)
    if raw:
        v.existing("SHARDS", Path(shards), "dir")
    else:
        v.shards(shards)
    v.output("--json", json_out, "file")
    v.device(device)


@bench_app.command("loader")
def bench_loader_cmd(shards: str = typer.Argument(..., metavar="SHARDS", help=SHARDS_HELP + " (with --backend seed: raw image input as for dfp shard)"),
                     backend: str = typer.Option("dali", help="dali, torch or seed (then SHARDS is the raw input folder)"),
                     device: str = typer.Option("auto", help=DEVICE_HELP),
                     split: str = typer.Option("train", help="train, val or test"),
                     sampling: str = typer.Option("inverse", help="inverse (class frequency), sqrt or natural, as for dfp train"),
                     batch_size: int = typer.Option(64, help=BATCH_HELP),
                     batches: int = typer.Option(30, help="timed batches"),
                     warmup: int = typer.Option(3, help="batches drawn before the clock starts"),
                     workers: int = typer.Option(2, help="loader worker processes (torch and seed backends)"),
                     gpu_decode: bool = typer.Option(False, "--gpu-decode", help="torch backend: decode JPEGs on the device"),
                     image_size: int = typer.Option(224, metavar=SIZE, help=SIZE_HELP),
                     dali_threads: Optional[int] = typer.Option(None, help="DALI CPU threads (default: cores + 1)"),
                     hw_decoder_load: Optional[float] = typer.Option(
                         None, help="DALI on a GPU: share of JPEGs for the hardware decoder, 0..1 (default DALI's)"),
                     cache_dir: Optional[Path] = typer.Option(None, help=CACHE_DIR_HELP),
                     cache_limit: str = typer.Option("20G", metavar="BYTES", help=CACHE_LIMIT_HELP),
                     json_out: Optional[Path] = typer.Option(None, "--json", help=JSON_OUT_HELP)):
    """Loader samples/s after warm-up with the training augmentation; JSON holds class_counts delivered."""
    v.choice("backend", backend, ("dali", "torch", "seed"))
    v.minimum(1, dali_threads=dali_threads)
    v.minimum(0, hw_decoder_load=hw_decoder_load)
    if hw_decoder_load is not None and hw_decoder_load > 1:
        raise UsageError(f"--hw-decoder-load must be between 0 and 1, got {hw_decoder_load}")
    v.choice("split", split, SPLITS)
    sampling = {"weighted": "inverse"}.get(sampling, sampling)  # an alias, not listed in help
    v.choice("sampling", sampling, SAMPLINGS)
    v.minimum(0, warmup=warmup, workers=workers)
    _check_bench_run(shards, device, batch_size, batches, image_size, json_out, raw=backend == "seed")
    _use_cache(cache_dir, cache_limit)
    from .bench import bench_loader, bench_seed_baseline, machine
    from .loaders import resolve_device
    dev = str(resolve_device(device))
    if backend == "seed":
        row = bench_seed_baseline(shards, dev, batch_size, batches, warmup, workers, image_size, split)
    else:
        row = bench_loader(shards, backend, dev, split, sampling, batch_size, batches, warmup, workers, gpu_decode,
                           image_size, dali_threads, hw_decoder_load)
    row["machine"] = machine()
    _emit(row, json_out, f"{row['backend']} on {row['device']}: {row['samples_per_s']:.1f} samples/s "
                         f"({row['samples']} samples in {row['seconds']:.2f}s), delivered {row['class_counts']}")


@bench_app.command("train")
def bench_train_cmd(shards: Path = typer.Argument(..., metavar="SHARDS", help="shard folder"),
                    device: str = typer.Option("auto", help=DEVICE_HELP),
                    backend: str = typer.Option("dali", help="loader: dali or torch"),
                    model: Optional[str] = typer.Option(None, help=MODEL_HELP),
                    batch_size: int = typer.Option(32, help=BATCH_HELP), batches: int = typer.Option(10, help="timed training steps"),
                    image_size: int = typer.Option(224, metavar=SIZE, help=SIZE_HELP),
                    json_out: Optional[Path] = typer.Option(None, "--json", help=JSON_OUT_HELP)):
    """Training samples/s, fp32 vs AMP, with the share of time spent waiting for data."""
    v.choice("backend", backend, ("dali", "torch"))
    _check_bench_run(shards, device, batch_size, batches, image_size, json_out)
    v.model_name(model)
    from .bench import bench_train, format_table, machine
    res = {"machine": machine(), "train": bench_train(shards, device, backend, model, batch_size, batches, image_size)}
    _emit(res, json_out, format_table(res))


@bench_app.command("all")
def bench_all_cmd(samples: int = typer.Option(2000, help="synthetic 512x384 JPEG images to build"),
                  work: Optional[Path] = typer.Option(None, help="work folder (default: a temporary one)"),
                  batches: int = typer.Option(20, help="timed loader batches per contender and round"),
                  rounds: int = typer.Option(3, help="interleaved rounds for packing and loaders; ratios are medians over rounds"),
                  train_model: str = typer.Option("resnet18", help="image model of the training benchmark"),
                  train_batches: int = typer.Option(6, help="timed training steps"),
                  train_image_size: int = typer.Option(224, metavar=SIZE, help="training benchmark input side"),
                  memory_sizes: str = typer.Option("20000,200000", help="dataset sizes for the loader memory probe"),
                  json_out: Optional[Path] = typer.Option(None, "--json", help=JSON_OUT_HELP)):
    """Everything side by side in one run: packing, loaders, training, sampler planning, loader memory."""
    sizes = v.int_list("memory_sizes", memory_sizes)
    v.minimum(20, samples=samples)
    v.minimum(1, batches=batches, rounds=rounds, train_batches=train_batches)
    v.minimum(MIN_IMAGE_SIZE, train_image_size=train_image_size)
    v.output("--work", work, "dir")
    v.output("--json", json_out, "file")
    v.model_name(train_model, ("image",), "train_model")
    from .bench import bench_all
    bench_all(samples, json_out, work, batches, train_model, train_batches, train_image_size, sizes, rounds=rounds)


def _emit(res: dict, json_out: Optional[Path], text: str) -> None:
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(res, indent=2))
    typer.echo(text)


@app.command()
def demo(out: Path = typer.Option(Path("demo_out"), help="work folder: data, shards, run"),
         modality: str = typer.Option("image", help="image, audio or video"),
         device: str = typer.Option("auto", help=DEVICE_HELP),
         epochs: Optional[int] = typer.Option(None, help="training epochs (default: the demo's own per modality, see README)"),
         batch_size: int = typer.Option(32, help=BATCH_HELP),
         backend: str = typer.Option("auto", help="loader backend: auto (dali if installed), dali or torch"),
         seed: int = typer.Option(0, help="seeds the data, the split and training")):
    """The whole job on an embedded synthetic dataset: synth -> shard -> train -> tune -> report."""
    v.choice("modality", modality, MODALITIES)
    v.choice("backend", backend, BACKENDS)
    v.minimum(1, epochs=epochs, batch_size=batch_size)
    v.minimum(0, seed=seed)
    v.output("--out", out, "dir")
    v.device(device)
    from .demo import run_demo
    run_demo(out, modality, device, epochs, batch_size, backend, seed=seed)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        _echo_err("interrupted")
        sys.exit(130)
    except Exception as e:
        code, msg = exit_code(e), str(e)
        if code is None:
            code, msg = _disk_error(e)
        if code is None:
            raise
        _echo_err(msg)
        sys.exit(code)


def _disk_error(e: BaseException) -> tuple[Optional[int], str]:
    """A folder that cannot be written (exit 2) or a full disk (exit 1), also when torch wrapped the OSError
    into its own error: one line naming the file. Anything else is a bug and keeps its traceback."""
    import errno
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return 2, f"{_target(e)}: {e.strerror}; make the folder writable or choose another one"
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return 1, (f"{_target(e)}: {e.strerror}; free some space and run again (a run continues with --resume; "
                       "nothing half-written was left)")
        e = e.__cause__ or e.__context__
    return None, ""


def _target(e: OSError) -> str:
    """The file an OSError names, as the user knows it (not its temporary name)."""
    name = str(e.filename) if e.filename else "writing"
    return name.removesuffix(".partial")


if __name__ == "__main__":
    main()
