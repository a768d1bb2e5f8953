"""Fixtures for the datastore tests: tiny tokenizer and model, real-text corpora, a built index."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from _tiny import stdlib_sources, tiny_model, tiny_tokenizer  # noqa: E402

from specgen.datastore import IndexBuildConfig, build_index  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads, and on a busy 2-core machine OpenMP barriers stall."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tok() -> Any:
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def model(tok: Any) -> Any:
    return tiny_model(len(tok))


@pytest.fixture()
def small_corpus(tmp_path: Path) -> Path:
    """Two stdlib modules (~15k tiny-tokenizer tokens)."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for src in stdlib_sources()[1:3]:
        shutil.copy(src, folder / src.name)
    return folder


@pytest.fixture(scope="session")
def big_index(tmp_path_factory: pytest.TempPathFactory, tok: Any, model: Any) -> Path:
    """A flat index of argparse.py (~35k keys), built once: the recall and retrieval tests read it."""
    root = tmp_path_factory.mktemp("big")
    corpus = root / "corpus"
    corpus.mkdir()
    shutil.copy(stdlib_sources()[0], corpus / "argparse.py")
    out = root / "index"
    build_index(model, tok, corpus, out, IndexBuildConfig(index_type="flat", window=512, overlap=128))
    return out
