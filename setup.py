"""One distribution, three packages: data_pipeline -> pretrain -> launcher (see docs/architecture.md)."""

from setuptools import find_packages, setup

# Ranges verified on CPU with Python 3.11. torch is pinned to the CPU wheel for CPU installs;
# GPU images (docker/Dockerfile) install their own CUDA build first, which satisfies the range.
# The floors of Python (3.11) and torch (2.6) are transformers 5's own (its Requires-Python and its
# torch extra), not ours: nothing older can install it.
INSTALL_REQUIRES = [
    "torch>=2.6,<2.15",
    "deepspeed>=0.19,<0.20",
    "transformers>=5,<6",
    "pyarrow>=17",
    "sentencepiece>=0.2",
    "tokenizers>=0.23",  # encode_batch_fast; transformers 5 needs >= 0.23.1 anyway
    "safetensors>=0.4",
    "tensorboard>=2.17",
    "pyyaml>=6",
    "tqdm>=4.66",
    "zstandard>=0.22",
    "numpy>=1.26",
    "psutil>=5.9",
    # mlm-finetune trains with the Hugging Face Trainer, which needs accelerate.
    "accelerate>=1.1",
    # mlm-finetune --task token-classification scores entities with seqeval (as CoNLL NER results are).
    "seqeval>=1.2.2,<2",
    # mlm-finetune --peft lora (pretrain/finetune/peft_setup.py); 0.21 is what it is tested with.
    "peft>=0.18,<1",
]

# Chinese word segmentation for whole-word masking (data_pipeline/tokenizer/segment.py): jieba's
# dictionary and HMM in Rust. Without it a build of Chinese text warns and takes word starts from the
# tokenizer.
ZH_REQUIRES = ["rjieba>=0.2.2,<0.3"]
# ruff is pinned to a minor series: new releases add lint rules and format Markdown code blocks,
# which would fail `make lint` on a clean machine without any change of ours.
# `datasets` is no runtime dependency (shards are read with pyarrow): one test and bench/data_pipeline.py
# check that `datasets.Dataset.from_file` reads our shards.
DATASETS_REQUIRES = ["datasets>=4,<6"]
TEST_REQUIRES = ["pytest>=8", "ruff>=0.17,<0.18", *ZH_REQUIRES, *DATASETS_REQUIRES]
# What only the benchmarks in bench/ need on top: bench/segmenter.py compares rjieba with jieba (the
# HF Trainer peers' accelerate is a runtime dependency, for mlm-finetune).
BENCH_REQUIRES = ["jieba>=0.42,<0.43", *DATASETS_REQUIRES]

with open("README.md", encoding="utf-8") as readme_file:
    README = readme_file.read()

setup(
    name="mlm-pretrain",
    version="0.1.0",
    description=(
        "Distributed BERT-style masked-language-model pretraining: data pipeline, DeepSpeed trainer, launcher"
    ),
    long_description=README,
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["data_pipeline*", "pretrain*", "launcher*"]),
    package_data={"launcher": ["templates/*"]},
    install_requires=INSTALL_REQUIRES,
    extras_require={"zh": ZH_REQUIRES, "test": TEST_REQUIRES, "bench": BENCH_REQUIRES},
    entry_points={
        "console_scripts": [
            "mlm-data=data_pipeline.cli:main",
            "mlm-train=pretrain.__main__:main",
            "mlm-launch=launcher.cli:main",
            "mlm-finetune=pretrain.finetune.cli:main",
        ]
    },
)
