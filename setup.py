"""Packaging for specgen: one distribution, the top-level folders mapped into the `specgen` namespace.

`kernels/`, `cli/` and `bench/` live at the top of the repository for readability but are installed
as `specgen.kernels`, `specgen.cli` and `specgen.bench`: a top-level `kernels` package would shadow
the HF `kernels` package that transformers probes for.
"""
from setuptools import setup

PACKAGES = {
    "specgen": "specgen",
    "specgen.decoding": "specgen/decoding",
    "specgen.proposers": "specgen/proposers",
    "specgen.specguard": "specgen/specguard",
    "specgen.datastore": "specgen/datastore",
    "specgen.kernels": "kernels",
    "specgen.cli": "cli",
    "specgen.bench": "bench",
    "specgen.serve": "specgen/serve",
}

# Pinned and tested together on CPU (Python 3.11). torch comes from the local CPU wheel; the
# range is left to the pin so that no resolver pulls a CUDA build.
INSTALL_REQUIRES = [
    "torch==2.13.0",
    "transformers==5.23.0",
    "accelerate==1.15.0",
    "gguf==0.19.0",
    "safetensors==0.8.0",
    "tokenizers==0.23.3",
    "numpy==2.4.6",
    "faiss-cpu==1.15.1",
    "triton==3.9.0",
    "typer==0.29.1",
    "rich==15.0.0",
    "matplotlib==3.11.2",
    "pyyaml==6.0.3",
    "fastapi==0.165.0",  # specgen serve
    "uvicorn==0.54.0",
]

setup(
    name="specgen",
    version="0.1.0",
    description="Speculative decoding for LLM generation (SENSE, SpecGuard, PLD, REST, SD), measured honestly",
    python_requires=">=3.11",
    packages=list(PACKAGES),
    package_dir=PACKAGES,
    install_requires=INSTALL_REQUIRES,
    package_data={"specgen": ["data/paraphrase.jsonl", "data/LICENSE.paraphrase"]},
    extras_require={
        "gpu": ["faiss-gpu==1.15.1"],
        "test": ["pytest==9.2.0", "openai==3.57.0"],  # the server tests drive it with the official client
        "ray": ["ray==2.60.0"],  # build-index --ray (Ray core only: no torch, no dashboard extras)
    },
    entry_points={"console_scripts": ["specgen=specgen.cli.main:main"]},
)
