"""The datastores: the semantic index (SENSE keys = hidden states) and REST's suffix array, one folder.

DESIGN.md sections 2 and 4. Public API:
- `build_index(model, tokenizer, corpus, out_dir, IndexBuildConfig(...), progress) -> Manifest`
- `SemanticIndex.load(path, expected_identity, layer)` -> `.search`, `.continuations`, `.suffix_array`, `.info()`
- `SuffixArray` (REST longest-suffix retrieval), corpus readers, `sharegpt_corpus(n, offset)`.
"""
from .build import IndexBuildConfig, build_index, identity_of
from .corpus import CorpusStats, Document, iter_documents, iter_sharegpt, sharegpt_corpus
from .manifest import FORMAT_VERSION, Manifest, read_manifest
from .store import SemanticIndex, describe_index
from .suffix import SuffixArray, build_suffix_array

__all__ = [
    "FORMAT_VERSION", "CorpusStats", "Document", "IndexBuildConfig", "Manifest", "SemanticIndex", "SuffixArray",
    "build_index", "build_suffix_array", "describe_index", "identity_of", "iter_documents", "iter_sharegpt",
    "read_manifest", "sharegpt_corpus",
]
