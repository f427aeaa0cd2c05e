"""Data resolution order, checksum verification and fetching, all without network access."""

import io
import tarfile
from pathlib import Path

import pytest

from cifc_bench.core import data
from cifc_bench.core.data import DataError, resolve_data_dir


def _dataset(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    return root


def test_resolution_order_cli_then_env_then_cache(tmp_path, monkeypatch):
    cli, env, cache = _dataset(tmp_path / "cli"), _dataset(tmp_path / "env" / "cifc10"), tmp_path / "cache"
    _dataset(cache / "data" / "cifc10")
    monkeypatch.setenv("CIFC_BENCH_CACHE", str(cache))
    monkeypatch.setenv(data.DATA_ENV, str(env.parent))
    assert resolve_data_dir("cifc10", cli) == cli
    assert resolve_data_dir("cifc10", None) == env  # a parent holding <dataset>/ works too
    monkeypatch.delenv(data.DATA_ENV)
    assert resolve_data_dir("cifc10", None) == cache / "data" / "cifc10"


def test_nothing_found_says_how_to_get_the_data(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFC_BENCH_CACHE", str(tmp_path))
    with pytest.raises(DataError, match=r"cifc-bench data fetch cifc10.*--data-dir DIR"):
        resolve_data_dir("cifc10", None)


def _release_tarball(src: Path, tmp_path: Path, prefix: str) -> Path:
    archive = tmp_path / "release.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for f in sorted(src.rglob("*")):
            if f.is_file():
                tar.add(f, arcname=prefix + str(f.relative_to(src)))
    return archive


def _mini_release(tmp_path: Path):
    src = tmp_path / "src"
    (src / "images" / "x").mkdir(parents=True)
    (src / "images" / "x" / "a.txt").write_text("hello")
    (src / "caption").mkdir()
    (src / "caption" / "b.txt").write_text("world")
    sums = tmp_path / "mini.sha256"
    sums.write_text("".join(f"{data.sha256_file(p)}  ./{p.relative_to(src)}\n" for p in sorted(src.rglob("*")) if p.is_file()))
    return src, sums


def test_fetch_downloads_verifies_and_places_the_release(tmp_path):
    src, sums = _mini_release(tmp_path)
    archive = _release_tarball(src, tmp_path, data.RELEASES["cifc10"].member_prefix)
    target = data.fetch("cifc10", tmp_path / "out", sums, url=archive.as_uri())
    assert (target / "images" / "x" / "a.txt").read_text() == "hello"
    assert data.verify_checksums(target, sums) == []


def test_fetch_refuses_a_tampered_archive_and_leaves_nothing(tmp_path):
    src, sums = _mini_release(tmp_path)
    (src / "caption" / "b.txt").write_text("tampered")
    archive = _release_tarball(src, tmp_path, data.RELEASES["cifc10"].member_prefix)
    with pytest.raises(DataError, match="does not match the published checksums"):
        data.fetch("cifc10", tmp_path / "out", sums, url=archive.as_uri())
    assert not (tmp_path / "out").exists()


def test_fetch_offline_explains_the_local_copy_route(tmp_path, capsys):
    from cifc_bench.cli import main

    missing = (tmp_path / "nowhere.tar.gz").as_uri()  # unreachable, without touching the network
    assert main(["data", "fetch", "cifc10", "--to", str(tmp_path / "x"), "--url", missing]) == 2
    err = capsys.readouterr().err
    assert "could not download 'cifc10'" in err and "--data-dir DIR" in err and "CIFC_BENCH_DATA" in err


def test_unsafe_archive_paths_are_refused(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo(data.RELEASES["cifc10"].member_prefix + "../../evil.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(DataError, match="unsafe path"):
        data._extract(buf.getvalue(), data.RELEASES["cifc10"].member_prefix, tmp_path)


def test_cifc10_checksums_shipped_with_the_protocol_match_the_release(cifc10_dir):
    from cifc_bench.core.protocol import load_protocol

    assert data.verify_checksums(cifc10_dir, load_protocol("cifc10").checksum_file) == []
