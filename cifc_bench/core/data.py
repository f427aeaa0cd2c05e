"""Where a protocol's data lives, how it is fetched, and how it is verified.

Resolution order: ``--data-dir``, then ``$CIFC_BENCH_DATA``, then the user cache. A directory may be the
dataset itself or a parent holding ``<dataset>/``::

    root = resolve_data_dir("cifc10", cli_dir=None)
    problems = verify_checksums(root, checksum_file)
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cifc_bench.core.atomic import atomic_directory

DATA_ENV = "CIFC_BENCH_DATA"


class DataError(RuntimeError):
    """Data that is missing, damaged or cannot be fetched; the message says how to fix it."""


@dataclass(frozen=True)
class Release:
    """Where the official copy of a dataset is published."""

    name: str
    url: str
    member_prefix: str  # the folder inside the archive that is the dataset
    homepage: str


CIFC_COMMIT = "9819aa843a4162e68becb3a2f46a97024b020d98"
RELEASES = {
    "cifc10": Release(
        name="cifc10",
        url=f"https://codeload.github.com/JiahuaDong/CIFC/tar.gz/{CIFC_COMMIT}",
        member_prefix=f"CIFC-{CIFC_COMMIT}/datasets/",
        homepage=f"https://github.com/JiahuaDong/CIFC/tree/{CIFC_COMMIT}/datasets",
    )
}


def _is_dataset_dir(path: Path, marker: str) -> bool:
    return (path / marker).exists()


def resolve_data_dir(dataset: str, cli_dir: str | os.PathLike | None = None, marker: str = "images") -> Path:
    """The first existing candidate folder for ``dataset``, else a DataError that lists what was tried."""
    candidates: list[tuple[str, Path]] = []
    if cli_dir is not None:
        candidates.append(("--data-dir", Path(cli_dir).expanduser()))
    if os.environ.get(DATA_ENV):
        candidates.append((f"${DATA_ENV}", Path(os.environ[DATA_ENV]).expanduser()))
    candidates.append(("user cache", cache_dir() / "data"))
    for label, base in candidates:
        for path in (base, base / dataset):
            if _is_dataset_dir(path, marker):
                return path
        if label == "--data-dir":  # an explicit directory that is wrong must not fall through silently
            raise DataError(
                f"--data-dir {base} holds no {dataset!r} data (no {marker}/ folder in it or in {base / dataset}). "
                f"Point --data-dir at the dataset folder, or run `cifc-bench data fetch {dataset}`."
            )
    tried = ", ".join(f"{label}: {p}" for label, p in candidates)
    raise DataError(
        f"no local copy of {dataset!r} was found (tried {tried}). Run `cifc-bench data fetch {dataset}` "
        f"with network access, or pass --data-dir DIR / set {DATA_ENV}=DIR to a copy you already have."
    )


def read_checksums(checksum_file: Path) -> dict[str, str]:
    """``sha256sum``-format lines to {relative path: digest}."""
    out: dict[str, str] = {}
    for lineno, line in enumerate(Path(checksum_file).read_text().splitlines(), 1):
        if not line.strip():
            continue
        digest, _, rel = line.strip().partition("  ")
        if len(digest) != 64 or not rel:
            raise DataError(f"{checksum_file}:{lineno}: not a 'sha256  path' line: {line!r}")
        out[rel.removeprefix("./")] = digest
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_checksums(root: Path, checksum_file: Path) -> list[str]:
    """One sentence per file that is missing or differs from the published checksum; empty when intact."""
    problems = []
    for rel, digest in read_checksums(checksum_file).items():
        path = root / rel
        if not path.exists():
            problems.append(f"missing file {path} (listed in {checksum_file.name})")
        elif sha256_file(path) != digest:
            problems.append(f"file {path} differs from its checksum in {checksum_file.name} (damaged or edited)")
    return problems


def fetch(dataset: str, to: Path | None, checksum_file: Path, url: str | None = None) -> Path:
    """Download and unpack the official release, verify every file, then move it into place atomically."""
    if dataset not in RELEASES:
        raise DataError(f"no download is known for dataset {dataset!r}; known: {', '.join(RELEASES)}")
    release = RELEASES[dataset]
    target = Path(to).expanduser() if to else cache_dir() / "data" / dataset
    if target.exists() and not verify_checksums(target, checksum_file):
        return target
    url = url or release.url
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 (the URL is ours or the user's)
            payload = resp.read()
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        raise DataError(
            f"could not download {dataset!r} from {url} ({err}). Without network access, copy the "
            f"'datasets/' folder of {release.homepage} to a directory and pass it with --data-dir DIR "
            f"or {DATA_ENV}=DIR (`cifc-bench validate --protocol {dataset} --data-dir DIR` checks it)."
        ) from err
    with atomic_directory(target) as tmp:
        _extract(payload, release.member_prefix, tmp)
        problems = verify_checksums(tmp, checksum_file)
        if problems:
            raise DataError(
                f"the download from {url} does not match the published checksums: {problems[:5]}"
                + (f" and {len(problems) - 5} more" if len(problems) > 5 else "")
            )
    return target


def _extract(payload: bytes, prefix: str, dest: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(payload), mode="r:*") as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.isfile()]
        if not members:
            raise DataError(f"the archive has no files under {prefix!r}")
        for m in members:
            rel = Path(m.name[len(prefix) :])
            if rel.is_absolute() or ".." in rel.parts:
                raise DataError(f"refusing archive member with unsafe path {m.name!r}")
            out = dest / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(m) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)


def cache_dir() -> Path:
    """Where built-in models and downloaded data live; ``CIFC_BENCH_CACHE`` overrides the user cache."""
    env = os.environ.get("CIFC_BENCH_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("cifc-bench"))
