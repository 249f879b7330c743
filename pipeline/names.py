"""The names the command line accepts and the modules that implement them share: one home, importing nothing.

`dfp --help` and the argument checks read them without loading torch; the implementing modules (losses.py,
loaders, datasets, backbones.py) take their registries from here, and tests/test_options.py checks that each
name is built by its module.
"""
from __future__ import annotations

MODALITIES = ("image", "audio", "video")
SPLITS = ("train", "val", "test")
# loader backends; "auto" picks dali where it imports, else torch
LOADER_BACKENDS = ("dali", "torch")
BACKENDS = ("auto", *LOADER_BACKENDS)
SAMPLINGS = ("inverse", "sqrt", "natural")
LOSSES = ("focal", "weighted_bce", "bce")
# --dataset: the input layouts pipeline.datasets reads
DATASETS = ("folders", "table", "ff++", "celeb-df", "dfdc", "asvspoof2019", "asvspoof5", "in-the-wild",
            "fakeavceleb", "deepfakebench")
# --ff-compression: FF++ and DeepfakeBench store each video at these compression levels
COMPRESSIONS = ("raw", "c23", "c40")

IMAGE_MODELS = ("efficientnet_b0", "efficientnet_b4", "resnet18", "resnet50", "mobilenet_v3_large")
# torchaudio's speech SSL front-ends on raw 16 kHz waveforms (backbones.SSL_BUNDLES names their bundles)
SSL_MODELS = ("wav2vec2_base", "wav2vec2_large", "wav2vec2_large_lv60k", "wav2vec2_xlsr53", "wav2vec2_xlsr_300m",
              "wav2vec2_xlsr_1b", "wav2vec2_xlsr_2b", "hubert_base", "hubert_large", "hubert_xlarge", "wavlm_base",
              "wavlm_base_plus", "wavlm_large")
AUDIO_MODELS = ("audio_resnet18", *SSL_MODELS)
VIDEO_MODELS = ("frame_pool", "r2plus1d_18")
DEFAULT_MODEL = {"image": "efficientnet_b0", "audio": "audio_resnet18", "video": "frame_pool"}
