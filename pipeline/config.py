"""The settings of `dfp train` (`TrainConfig`) and `dfp shard` (`ShardParams`), each field declared once with the
help of its command-line option; cli.py builds the two commands' options from these fields.

Importing this module imports neither torch nor anything else heavy: `dfp --help` reads it.
Field metadata (`option`, `argument`): `flag`, the option's declaration (`--field-name`, a switch `--faces`, a
pair `--reencode/--no-reencode`); `help`; `metavar`; `path`, the option takes a path that the field keeps as text;
`negate`, the flag is a switch meaning the field's opposite (`--quiet`: progress off); `argument`, a positional
argument instead of an option.
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass, field

from .names import AUDIO_MODELS, DATASETS, IMAGE_MODELS, SSL_MODELS, VIDEO_MODELS

# Help texts of options that several commands share, so that one concept reads the same everywhere.
DEVICE_HELP = "auto (CUDA when available), cpu, cuda or cuda:N"
BATCH_HELP = "samples per batch"
SIZE = "<size>"  # --image-size: the side of a square input in pixels (synth also takes WxH)
SIZE_HELP = "images and video frames: the side in pixels of the square they are resized and cropped to"
SHARDS_HELP = "shard folder from dfp shard, or its URL (s3://, gs://, http(s)://)"
CACHE_DIR_HELP = ("SHARDS at a URL: fetch whole shards into this folder ahead of the plan, shared by the processes "
                  "of one node (default: none, each sample is a ranged read)")
CACHE_LIMIT_HELP = "most bytes --cache-dir may hold, e.g. 20G or 500M; the least recently used shards go first (default: 20G)"
MODEL_HELP = (f"image: {', '.join(IMAGE_MODELS)}; audio: {AUDIO_MODELS[0]} (log-mel), or on raw 16 kHz waveforms "
              f"torchaudio's SSL front-ends {', '.join(SSL_MODELS)} with a learned weighted sum of their layers; "
              f"video: {', '.join(VIDEO_MODELS)}; image: also timm:NAME, any timm model, e.g. timm:xception41, whose "
              "input size, mean/std and interpolation it brings (default: per modality, efficientnet_b0, "
              "audio_resnet18 or frame_pool)")
RAW_ONLY = "as for dfp shard (raw input only)"


def option(flag: str, default=MISSING, help: str = "", *, metavar: str | None = None, path: bool = False,
           negate: bool = False):
    """A dataclass field that is a command-line option, its flag spelled out (`--lr`; a switch pair
    `--reencode/--no-reencode`) so that a search of the code for an option finds its field."""
    meta = {"flag": flag, "help": help, "metavar": metavar, "path": path, "negate": negate, "argument": False}
    return field(default=default, metadata=meta)


def argument(metavar: str, help: str = ""):
    """A required dataclass field that is a positional command-line argument."""
    meta = {"flag": None, "help": help, "metavar": metavar, "path": False, "negate": False, "argument": True}
    return field(metadata=meta)


def parameter_name(f) -> str:
    """The command-line parameter of a field: its own name, or for a `negate` switch the flag's (`quiet`)."""
    if f.metadata["negate"]:
        return f.metadata["flag"].split("/")[0].lstrip("-").replace("-", "_")
    return f.name


@dataclass
class TrainConfig:
    """dfp train's settings. config.json and the checkpoints record them by field name, and a resume reads them
    back by name (resume.merge_config): a renamed field would no longer load from older runs."""
    shards: str = argument("SHARDS", SHARDS_HELP)
    out: str = option("--out", "runs/exp", "run directory", path=True)
    device: str = option("--device", "auto", DEVICE_HELP)
    backend: str = option("--backend", "auto", "loader backend: auto (dali if installed), dali or torch")
    epochs: int = option("--epochs", 10, "passes over the train split (see --epoch-len)")
    batch_size: int = option("--batch-size", 32, BATCH_HELP + " (per process under torchrun)")
    lr: float = option("--lr", 3e-4, "AdamW peak learning rate (the CPU recipe, see --model, uses 1e-3)")
    weight_decay: float = option("--weight-decay", 1e-4, "AdamW weight decay")
    warmup_epochs: float = option("--warmup-epochs", 1.0, "linear learning-rate warm-up from near 0 to --lr over this "
                                                          "many epochs (may be fractional; 0: the first step at --lr), "
                                                          "then cosine decay")
    clip: float = option("--clip", 1.0, "clip the gradients' global L2 norm to at most this each step (> 0; a large "
                                        "value, e.g. 1e9, leaves them as computed)")
    seed: int = option("--seed", 0, "seed for initialisation, sampling and augmentation")
    model: str | None = option("--model", None, MODEL_HELP + ". On a CPU without --model and --image-size, image and "
                                                             "video runs use the CPU recipe: resnet18 (video: "
                                                             "frame_pool over resnet18) at 64 px, lr 1e-3")
    frame_backbone: str = option("--frame-backbone", "efficientnet_b0", "video frame_pool: the per-frame 2D backbone, "
                                                                        "an image model or timm:NAME")
    pretrained: bool = option("--pretrained/--no-pretrained", False, "start from the library's pretrained weights: "
                                                                     "torchvision's ImageNet ones, for timm:NAME the "
                                                                     "tag's through timm's hub, for the SSL audio "
                                                                     "models torchaudio's bundle (needs network or a "
                                                                     "cached download: the torch hub or Hugging Face "
                                                                     "cache)")
    weights: str | None = option("--weights", None, "start from a local file: a dfp checkpoint or state dict, or the "
                                                    "network's own state dict in its library's key layout "
                                                    "(.safetensors, .pth or .bin; its classifier is left out); SSL "
                                                    "audio models also take a Hugging Face checkpoint (folder, or file "
                                                    "with config.json beside it) or a fairseq .pt (default: none)",
                                                    path=True)
    # pipeline/freeze.py
    freeze_backbone: bool = option("--freeze-backbone", False, "train the head only: the backbone stays as loaded, in "
                                                               "eval mode, without gradients (a linear probe; default: "
                                                               "everything trains)")
    unfreeze_last: int = option("--unfreeze-last", 0, "fine-tune only the backbone's last N blocks (stages or "
                                                      "transformer blocks, per architecture: see README) and what "
                                                      "follows them; the rest is frozen (0: off)")
    # pipeline/embcache.py
    cache_embeddings: bool = option("--cache-embeddings", False, "with --freeze-backbone: embed every train/val/test "
                                                                 "sample once into RUN/embeddings and train the head "
                                                                 "on them every epoch (default: off)")
    cache_views: int = option("--cache-views", 0, "--cache-embeddings: cache K augmented views of each train sample "
                                                  "instead of one un-augmented one (0: one, no augmentation)")
    strategy: str = option("--strategy", "auto", "auto: the imbalance ratio chooses loss, sampling, minority "
                                                 "augmentation and SMOTE, except those you set (a set flag always "
                                                 "applies); manual: the flags and their defaults")
    loss: str = option("--loss", "focal", "focal, weighted_bce or bce (unset: auto picks focal)")
    focal_alpha: str = option("--focal-alpha", "0.25", "weight of the fake class in focal loss, or 'auto' (= real "
                                                       "share)")
    focal_gamma: float = option("--focal-gamma", 2.0, "focal loss: how much easy samples are down-weighted (0: none)")
    sampling: str = option("--sampling", "inverse", "inverse, sqrt or natural (unset: auto picks from the imbalance)")
    class_weights: str | None = option("--class-weights", None, "per-sample class weights instead of --sampling, e.g. "
                                                                "real=1,fake=3 (default: none)")
    minority_augment: bool = option("--minority-augment/--no-minority-augment", True, "the strong augmentation recipe "
                                                                                      "for half of all training "
                                                                                      "samples, both classes alike, so "
                                                                                      "the minority's repeats get "
                                                                                      "varied views (unset: auto, on "
                                                                                      "unless the imbalance is mild)")
    smote: bool = option("--smote/--no-smote", False, "refit the head on SMOTE-balanced embeddings (unset: auto, on "
                                                      "for severe imbalance)")
    amp: str = option("--amp", "auto", "auto (bf16/fp16 on GPU, fp32 on CPU), bf16, fp16 or off")
    compile: bool = option("--compile", False, "torch.compile the model")
    workers: int = option("--workers", 2, "loader worker processes (torch backend)")
    image_size: int = option("--image-size", 224, SIZE_HELP + " (the CPU recipe, see --model, uses 64)", metavar=SIZE)
    audio_seconds: float = option("--audio-seconds", 4.0, "audio: clip length in seconds")
    max_samples_per_class: int | None = option("--max-samples-per-class", None, "use at most N samples per class of "
                                                                                "each split (seeded; default: all)")
    epoch_len: int | None = option("--epoch-len", None, "samples drawn per epoch (default: train split size)")
    patience: int = option("--patience", 5, "early stopping: epochs without val F1 improvement (0: off)")
    threshold_method: str = option("--threshold-method", "f1", "f1, youden, eer, precision:P or recall:R")
    resume: str | None = option("--resume", None, "continue the run in this directory from its last.pth (default: a "
                                                  "new run)", path=True)
    save_every: int = option("--save-every", 0, "also write last.pth every N steps, for mid-epoch resume (0: epoch "
                                                "ends only)")
    tensorboard: bool = option("--tensorboard", False, "also log each epoch's losses, val F1 and speed to RUN/tb for "
                                                       "TensorBoard")
    report: bool = option("--no-report", True, "skip plots and report.html", negate=True)
    # loaders/remote.py, shardcache.py
    cache_dir: str | None = option("--cache-dir", None, CACHE_DIR_HELP, path=True)
    cache_limit: str = option("--cache-limit", "20G", CACHE_LIMIT_HELP, metavar="BYTES")
    progress: bool = option("--quiet/--no-quiet", True, "no progress bars", negate=True)


@dataclass
class ShardParams:
    """dfp shard's settings, recorded by field name in the manifest's `params` (and read back by --merge)."""
    modality: str = option("--modality", "auto", "auto, image, audio or video")
    split: str = option("--split", "0.8,0.1,0.1", "train,val,test fractions (ignored for pre-split input)")
    seed: int = option("--seed", 0, "seed for the split and per-class limits")
    max_count: int = option("--max-count", 5000, "max samples per shard")
    max_size: int = option("--max-size", 1_000_000_000, "max bytes per shard")
    max_samples_per_class: int | None = option("--max-samples-per-class", None, "keep at most N files per class "
                                                                                "(seeded; default: all)")
    class_map: str | None = option("--class-map", None, "folder names to classes, e.g. 'original,real=real "
                                                        "manipulated,fake=fake' (default: real, fake and their "
                                                        "synonyms, see README)")
    group_depth: int = option("--group-depth", 0, "keep files under the same sub-folder (this many levels below the "
                                                  "class folder) in one split")
    dataset: str = option("--dataset", "folders", "how INPUT is laid out: " + ", ".join(DATASETS) + " (see README)")
    protocol: str | None = option("--protocol", None, "the dataset's label/split file or folder (default: at its usual "
                                                      "place in INPUT)", path=True)
    val_fraction: float = option("--val-fraction", 0.1, "share of train carved out as val where the input has no val "
                                                        "split")
    ff_compression: str = option("--ff-compression", "c23", "ff++ and deepfakebench: raw, c23 or c40")
    # None: shards.DEFAULT_MAX_SIDE per modality
    max_side: int | None = option("--max-side", None, "longest image/frame side (default 512 images, 256 video); JPEGs "
                                                      "within it keep their bytes")
    sample_rate: int = option("--sample-rate", 16000, "audio: resample to this rate (mono FLAC)")
    frames: int = option("--frames", 16, "video: frames sampled uniformly per clip")
    # media/image.py CHECKS
    check: str = option("--check", "decode", "JPEGs kept as they are: 'decode' proves each decodes; 'structure' only "
                                             "parses headers and the end marker (faster; damage inside the compressed "
                                             "data is then caught by `dfp verify` or skipped by the loaders)")
    # media/faces.py
    faces: bool = option("--faces", False, "images and video: store the largest face, aligned and cropped square, "
                                           "instead of the whole picture (see README, Face crops)")
    face_margin: float = option("--face-margin", 1.3, "--faces: crop side as a multiple of the detected box")
    face_size: int = option("--face-size", 256, "--faces: crop side in pixels")
    face_quality: int = option("--face-quality", 95, "--faces: JPEG quality of the crops (1-100)")
    # Storage controls (README, Removing storage shortcuts); None: off, or on with --debias (shards.DEBIAS)
    debias: bool = option("--debias", False, "store both classes alike: --reencode --chroma 420 --resize-rule crop "
                                             "(square for video) --trim-silence --fps 8 and, for images, a "
                                             "--jpeg-quality no finer than the JPEG inputs' (their 5th-percentile "
                                             "estimate, 50-95) unless given (see README)")
    reencode: bool | None = option("--reencode/--no-reencode", None, "images: re-encode every file; no JPEG keeps its "
                                                                     "original bytes (default: off; on with --debias)")
    # None: media/image.py and media/video.py JPEG_QUALITY
    jpeg_quality: int | None = option("--jpeg-quality", None, "JPEG quality of stored images and frames, 1-100 "
                                                              "(default 95 images, 90 video frames; with --debias, "
                                                              "images: the JPEG inputs' 5th-percentile estimate within "
                                                              "50-95)")
    chroma: str | None = option("--chroma", None, "JPEG chroma subsampling of stored images and frames: 420 or 444 "
                                                  "(default: the encoder's, 420)")
    # media/image.py `resize`
    resize_rule: str | None = option("--resize-rule", None, "size rule for images and frames, with --max-side S: fit "
                                                            "(shrink the longer side to S), longer (longer side "
                                                            "exactly S), square (shorter side S, centre-cropped SxS) "
                                                            "or crop (centre SxS at the picture's own scale; smaller "
                                                            "ones enlarged) (default: fit; with --debias crop for "
                                                            "images, square for video)")
    image_codec: str = option("--image-codec", "jpeg", "jpeg, or png to store images and frames losslessly (both "
                                                       "classes alike; every file re-encoded)")
    # media/audio.py `silence_bounds`
    trim_silence: bool | None = option("--trim-silence/--no-trim-silence", None, "audio: cut leading and trailing "
                                                                                 "silence (10 ms frames 40 dB below "
                                                                                 "the loudest; 20 ms margin) (default: "
                                                                                 "off; on with --debias)")
    # media/video.py `rate_indices`
    fps: float | None = option("--fps", None, "video: take --frames frames at this rate from the middle of each clip "
                                              "(default: spread over the clip; 8 with --debias)")
    max_pixels: int = option("--max-pixels", 100_000_000, "pictures and video frames over this many pixels are "
                                                          "rejected from their header, before decoding (0: no limit)")
    max_seconds: float = option("--max-seconds", 3600.0, "audio and video longer than this are rejected from their "
                                                         "header (0: no limit)")
