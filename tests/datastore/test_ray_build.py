"""`build-index --ray`: a local Ray cluster (2 CPUs, started here), 2 workers, the embedded model.

The sharded build must equal the single-process build of the same corpus (keys within fp16
tolerance, identical values and tokens, the same search results); sharded search must equal an
exact `faiss.IndexFlatIP` over the same keys; a worker killed mid-shard is retried while the previous
index stays loadable; an interrupted build resumes; bad input is one line and exit code 2.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray", reason="Ray is installed by `make setup` (specgen[ray])")

from specgen.datastore import IndexBuildConfig, SemanticIndex, build_index  # noqa: E402
from specgen.datastore.corpus import sharegpt_corpus  # noqa: E402
from specgen.datastore.raybuild import RayBuildConfig, build_index_ray  # noqa: E402

pytestmark = pytest.mark.slow  # the real embedded model on Ray workers

CFG = IndexBuildConfig(index_type="flat", max_tokens=3000, window=512, overlap=128, batch_tokens=2048)
RAY = RayBuildConfig(address="auto", workers=2, shard_tokens=700)


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sharegpt_corpus(10, offset=40, out_dir=tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory, real_bundle: Any, corpus: Path) -> Path:
    out = tmp_path_factory.mktemp("single") / "index"
    build_index(real_bundle.model, real_bundle.tokenizer, corpus, out, CFG, model_identity=real_bundle.identity())
    return out


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory, real_bundle: Any, corpus: Path, cluster: None) -> Path:
    out = tmp_path_factory.mktemp("sharded") / "index"
    _, wrote = build_index_ray(real_bundle.model, real_bundle.tokenizer, corpus, out, CFG, RAY,
                               model_identity=real_bundle.identity())
    assert wrote
    return out


def _queries(bundle: Any, n: int = 50) -> torch.Tensor:
    """[n, H] final hidden states of real prompts (not the corpus itself)."""
    text = ("How do I sort a list of dictionaries by a key in Python? Explain the difference between a process "
            "and a thread, and write a short poem about the sea. What is the capital of France? ")
    ids = bundle.tokenizer(text * 2, return_tensors="pt")["input_ids"][:, :n]
    with torch.inference_mode():
        out = bundle.model(input_ids=ids, output_hidden_states=True)
    return out.hidden_states[-1][0].float()


def _same_results(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], tol: float) -> None:
    """Top-k lists agree: scores within `tol`, and the ids agree except where two scores tie within `tol`."""
    (sa, ia), (sb, ib) = a, b
    np.testing.assert_allclose(sa, sb, atol=tol)
    for row in range(ia.shape[0]):
        for j in range(ia.shape[1]):
            if ia[row, j] != ib[row, j]:
                near = np.abs(sa[row] - sa[row, j]) <= 2 * tol
                assert ib[row, j] in ia[row][near] or ia[row, j] in ib[row][near], (row, j)


def test_sharded_build_equals_the_single_process_build(single: Path, sharded: Path, real_bundle: Any) -> None:
    one, many = SemanticIndex.load(single), SemanticIndex.load(sharded)
    assert len(many.manifest.shards) >= 3 and many.manifest.count == one.manifest.count
    assert many.info()["keys_per_shard"] == [s["row_end"] - s["row_start"] for s in many.manifest.shards]
    np.testing.assert_array_equal(np.asarray(many.tokens), np.asarray(one.tokens))
    np.testing.assert_array_equal(np.asarray(many.values), np.asarray(one.values))
    np.testing.assert_array_equal(many.doc_offsets, one.doc_offsets)
    np.testing.assert_allclose(np.asarray(many.keys, dtype=np.float32), np.asarray(one.keys, dtype=np.float32),
                               atol=4e-3)  # fp16 keys of differently packed batches
    q = _queries(real_bundle)
    assert q.shape[0] == 50
    _same_results(many.search(q, 8), one.search(q, 8), tol=4e-3)


def test_sharded_search_equals_an_exact_flat_index_over_the_same_keys(sharded: Path, real_bundle: Any) -> None:
    import faiss

    many = SemanticIndex.load(sharded)
    keys = np.asarray(many.keys, dtype=np.float32)  # [N, d] every shard, in row order
    oracle = faiss.IndexFlatIP(keys.shape[1])
    oracle.add(keys)
    q = many.prepare(_queries(real_bundle))
    got = many.search(_queries(real_bundle), 16)
    want = oracle.search(q, 16)
    _same_results(got, want, tol=1e-5)
    starts = [s["row_start"] for s in many.manifest.shards]
    assert len({int(np.searchsorted(starts, i, "right")) for i in got[1].ravel()}) > 1  # merged across shards


def test_a_second_run_with_the_same_inputs_writes_nothing(sharded: Path, real_bundle: Any, corpus: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in sharded.iterdir()}
    manifest, wrote = build_index_ray(real_bundle.model, real_bundle.tokenizer, corpus, sharded, CFG, RAY,
                                      model_identity=real_bundle.identity())
    assert not wrote and manifest.build["inputs_sha256"]
    assert {p.name: p.stat().st_mtime_ns for p in sharded.iterdir()} == before


def test_a_killed_worker_is_retried_and_the_old_index_stays_loadable(tmp_path: Path, single: Path, real_bundle: Any,
                                                                     corpus: Path, cluster: None) -> None:
    import shutil

    out = tmp_path / "index"
    shutil.copytree(single, out)  # the previous index at that path
    staging = out.with_name(out.name + ".shards")
    killed: list[int] = []
    loadable: list[int] = []

    def killer() -> None:
        deadline = time.time() + 240
        while time.time() < deadline and not killed:
            for part in staging.glob("keys-*.npy.tmp-*") if staging.is_dir() else []:
                pid = int(part.name.rsplit("-", 1)[1])
                loadable.append(len(SemanticIndex.load(out)))  # mid-build: the old index still loads
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.01)

    t = threading.Thread(target=killer)
    t.start()
    manifest, wrote = build_index_ray(real_bundle.model, real_bundle.tokenizer, corpus, out, CFG,
                                      RayBuildConfig(address="auto", workers=2, shard_tokens=700),
                                      model_identity=real_bundle.identity())
    t.join()
    assert killed, "no worker was caught mid-shard"
    assert loadable == [SemanticIndex.load(single).manifest.count]
    assert wrote and manifest.shards and not staging.exists()
    new = SemanticIndex.load(out)
    assert new.manifest.count == SemanticIndex.load(single).manifest.count
    np.testing.assert_allclose(np.asarray(new.keys, dtype=np.float32),
                               np.asarray(SemanticIndex.load(single).keys, dtype=np.float32), atol=4e-3)


def test_an_interrupted_build_resumes_from_its_finished_shards(tmp_path: Path, sharded: Path, real_bundle: Any,
                                                               corpus: Path, cluster: None) -> None:
    out = tmp_path / "index"
    calls = []

    def stop_after_first_shard(done: int, total: int) -> None:
        calls.append(done)
        if done > 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_index_ray(real_bundle.model, real_bundle.tokenizer, corpus, out, CFG, RAY,
                        model_identity=real_bundle.identity(), progress=stop_after_first_shard)
    assert not out.exists()  # nothing published
    staging = out.with_name(out.name + ".shards")
    finished = sorted(staging.glob("shard-*.json"))
    assert finished  # at least the shard that reported
    manifest, wrote = build_index_ray(real_bundle.model, real_bundle.tokenizer, corpus, out, CFG,
                                      RayBuildConfig(address="auto", workers=2, shard_tokens=700, resume=True),
                                      model_identity=real_bundle.identity())
    ray_info = manifest.build["ray"]
    assert wrote and ray_info["shards_resumed"] >= len(finished) >= 1
    assert ray_info["shards_resumed"] + ray_info["shards_encoded"] == len(manifest.shards)
    ref = SemanticIndex.load(sharded)
    np.testing.assert_array_equal(np.asarray(SemanticIndex.load(out).keys), np.asarray(ref.keys))


def _cli(*args: str, cwd: Path) -> Any:
    import subprocess
    import sys

    env = {**os.environ, "SPECGEN_DEBUG": ""}
    return subprocess.run([sys.executable, "-m", "specgen.cli.main", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


def _one_line_exit_2(r: Any, *words: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, sharded: Path, corpus: Path, real_bundle: Any) -> None:
    import shutil

    from specgen.datastore.raybuild import _check_staging

    # an unreachable cluster: refused at once, nothing written
    r = _cli("build-index", str(corpus), "-o", str(tmp_path / "x"), "--ray", "127.0.0.1:9", cwd=tmp_path)
    _one_line_exit_2(r, "cannot reach the Ray cluster")
    assert not (tmp_path / "x").exists()
    # a shard cut short on disk (size check on load), and one with flipped bytes (index-info --verify)
    cut = tmp_path / "cut"
    shutil.copytree(sharded, cut)
    part = cut / SemanticIndex.load(sharded).manifest.shards[1]["keys_file"]
    part.write_bytes(part.read_bytes()[:-64])
    _one_line_exit_2(_cli("index-info", str(cut), cwd=tmp_path), "keys-00001.npy")
    flipped = tmp_path / "flipped"
    shutil.copytree(sharded, flipped)
    part = flipped / "keys-00002.npy"
    data = bytearray(part.read_bytes())
    data[-100:] = bytes(100)
    part.write_bytes(bytes(data))
    assert _cli("index-info", str(flipped), cwd=tmp_path).returncode == 0  # the sizes agree
    _one_line_exit_2(_cli("index-info", str(flipped), "--verify", cwd=tmp_path), "sha256")
    # --resume over shards another model encoded (an interrupted build of model B left them)
    out = tmp_path / "other"
    staging = out.with_name(out.name + ".shards")
    other = {**real_bundle.identity(), "name": "another-model", "config_sha256": "0" * 64}
    _check_staging(staging, other, "x", resume=False)
    (staging / "plan.json").write_text(json.dumps({"model": other, "inputs_sha256": "x"}))
    r = _cli("build-index", str(corpus), "-o", str(out), "--ray", "--resume", "--shard-tokens", "700", cwd=tmp_path)
    _one_line_exit_2(r, "another model")
    assert not out.exists()


def test_append_to_a_sharded_index_extends_it_in_the_single_file_format(tmp_path: Path, sharded: Path,
                                                                         real_bundle: Any) -> None:
    import dataclasses
    import shutil

    out = tmp_path / "index"
    shutil.copytree(sharded, out)
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "note.txt").write_text("Sharded indexes keep their keys in several files, searched as one.\n" * 3)
    old = SemanticIndex.load(sharded)
    build_index(real_bundle.model, real_bundle.tokenizer, extra, out, dataclasses.replace(CFG, append=True),
                model_identity=real_bundle.identity())
    new = SemanticIndex.load(out)
    assert not new.manifest.shards and (out / "keys.npy").is_file()
    assert new.manifest.count > old.manifest.count
    np.testing.assert_array_equal(np.asarray(new.keys[: old.manifest.count]), np.asarray(old.keys))
    np.testing.assert_array_equal(np.asarray(new.values[: old.manifest.count]), np.asarray(old.values))
