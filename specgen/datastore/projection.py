"""Key projection of the semantic datastore: z-score + PCA (optional), then L2 normalisation, so the
inner product of a projected key and query is their cosine similarity (DESIGN.md section 4)."""
from __future__ import annotations

import numpy as np

from ..errors import SpecgenError

_PCA_SAMPLE = 100_000


def _l2(x: np.ndarray) -> np.ndarray:
    """Rows of x [n, d] scaled to unit L2 norm (zero rows stay zero)."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)  # [n, 1]
    return x / np.maximum(norm, 1e-12)


def fit_pca(raw: np.ndarray, dim: int, seed: int = 0) -> dict[str, np.ndarray]:
    """z-score + PCA to `dim` fitted on a sample of `raw` [N, H]: mean [H], scale [H], components [H, dim]."""
    n, h = raw.shape
    if dim > h:
        raise SpecgenError(f"pca dimension {dim} exceeds the hidden size {h}")
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(n, _PCA_SAMPLE), replace=False))
    x = np.asarray(raw[rows], dtype=np.float64)  # [s, H]
    mean = x.mean(axis=0)  # [H]
    scale = 1.0 / np.maximum(x.std(axis=0), 1e-6)  # [H]
    z = (x - mean) * scale  # [s, H]
    cov = z.T @ z / max(1, z.shape[0] - 1)  # [H, H]
    _, vecs = np.linalg.eigh(cov)  # ascending eigenvalues
    components = vecs[:, ::-1][:, :dim]  # [H, dim]
    return {"mean": mean.astype(np.float32), "scale": scale.astype(np.float32),
            "components": np.ascontiguousarray(components, dtype=np.float32)}


def project(x: np.ndarray, projection: dict[str, np.ndarray] | None) -> np.ndarray:
    """Keys or queries x [n, H] fp32 -> [n, d] normalised (the projection first, when there is one)."""
    if projection is not None:
        x = ((x - projection["mean"]) * projection["scale"]) @ projection["components"]  # [n, d]
    return _l2(np.asarray(x, dtype=np.float32)).astype(np.float32)
