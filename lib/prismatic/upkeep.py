"""Upkeep of a data root: one writer at a time, staging folders owned by runs, fault points, vacuum.

Why each part exists:

* **Writer lock.** Two ``prism`` writers on one data root race: delta-rs refuses the second commit
  (``CommitFailedError``), or both commit and a stage's own conservation check counts the other run's rows.
  Every ``prism`` command that writes holds an exclusive ``flock`` on ``<data_root>/_writer.lock`` for its whole
  run; a second writer fails at once with one line naming the holder (pid, host, since, command). The kernel
  drops the lock when its process dies (``kill -9`` included), so a dead run's lock is taken over without any
  clean-up. Read-only commands (``status``, ``sql``) never take it.
* **Staging owned by runs.** Stages stage Spark output and parsed files under ``<data_root>/_staging``; a run
  killed mid-stage leaves them behind. Each process stages under its own folder
  ``_staging/run-<host>-<pid>-<start>``: the pid *and* the process start time tell a live run from a dead one
  whose pid was reused, so the next run removes dead runs' folders and never a live one. Folders whose owner
  cannot be checked (another host, an older version's name) are removed only once older than a retention.
* **Fault points.** ``PRISM_FAULT=<point>:<n>`` kills this process with SIGKILL the ``n``-th time it reaches
  ``<point>`` (for example ``gradients:before_commit:1``). Tests use it to crash a stage at a chosen commit; it
  costs one environment lookup when unset. Points: ``<table>:before_commit`` and ``<table>:after_commit`` around
  every MERGE of the delta-rs engine (see :meth:`prismatic.tables.DeltaRsStore.merge`).
* **Vacuum.** A Delta table keeps files that old versions reference, and a writer killed between writing its
  Parquet files and committing leaves files no version references. :func:`vacuum` compacts small files and
  removes every file that the current snapshot does not reference and that is older than the retention
  (default 7 days, so time travel within a week and slow readers keep working), per table, with the bytes freed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prismatic.errors import PrismError

log = logging.getLogger(__name__)

LOCK_FILE = "_writer.lock"
STAGING = "_staging"
RUN_PREFIX = "run-"
FAULT_ENV = "PRISM_FAULT"
DEFAULT_RETENTION_HOURS = 168  # Delta's own default (delta.deletedFileRetentionDuration = 7 days)


class WriterLockError(PrismError):
    hint = "wait for that run to finish, or use another data_root; read-only commands (status, sql) work meanwhile"


# ---- fault points ----------------------------------------------------------------------------------------

_FAULT_HITS: Counter = Counter()


def fault_point(name: str) -> None:
    """Kill this process (SIGKILL, as ``kill -9``) if ``PRISM_FAULT`` names this point and its hit count.

    ``PRISM_FAULT="samples:after_commit:2"`` kills at the second time ``samples:after_commit`` is reached in
    this process. Nothing runs after the kill: no ``finally``, no ``atexit``; that is the point.
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    point, _, n = spec.rpartition(":")
    if point != name:
        return
    _FAULT_HITS[name] += 1
    if n.isdigit() and _FAULT_HITS[name] == int(n):
        log.warning("fault point %s reached (%s): SIGKILL", name, spec)
        os.kill(os.getpid(), signal.SIGKILL)


# ---- who owns a folder: host, pid and process start time -------------------------------------------------


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _start_ms(pid: int) -> int | None:
    """The process's start time in ms since the epoch, or None when no such process runs."""
    import psutil

    try:
        return int(psutil.Process(pid).create_time() * 1000)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.Error:  # access denied and the like: the process exists
        return -1


def owner_tag(pid: int | None = None) -> str:
    """``run-<host>-<pid>-<start ms>``: names this process (or ``pid``) uniquely on this host."""
    pid = os.getpid() if pid is None else pid
    return f"{RUN_PREFIX}{_host_tag()}-{pid}-{_start_ms(pid) or 0}"


def owner_alive(tag: str) -> bool | None:
    """True / False for a run folder of this host; None when it cannot be told (another host, another name)."""
    parts = tag[len(RUN_PREFIX) :].split("-") if tag.startswith(RUN_PREFIX) else []
    if len(parts) != 3 or not all(p.isalnum() for p in parts) or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    host, pid, start = parts[0], int(parts[1]), int(parts[2])
    if host != _host_tag():
        return None
    now = _start_ms(pid)
    if now is None:
        return False
    return now == -1 or abs(now - start) < 1000  # same pid and start time: the same process


# ---- staging ---------------------------------------------------------------------------------------------

_SWEPT: set[Path] = set()


def staging_dir(root: Path, kind: str) -> Path:
    """A fresh path for one piece of staged work, inside this process's run folder under ``<root>/_staging``.

    The first call per data root in a process also removes the staging of dead runs (:func:`sweep_staging`).
    The leaf is not created: callers (Spark writes, ingest) create it.
    """
    root = Path(root)
    if root.resolve() not in _SWEPT:
        _SWEPT.add(root.resolve())
        sweep_staging(root)
    run = root / STAGING / owner_tag()
    run.mkdir(parents=True, exist_ok=True)
    return run / f"{kind}-{uuid.uuid4().hex[:16]}"


@dataclass
class SweepReport:
    removed: list[Path] = field(default_factory=list)
    bytes: int = 0
    live: int = 0
    unknown: int = 0  # owner cannot be checked and younger than the retention: left alone

    def summary(self) -> str:
        kept = f"; kept {self.live} of live runs" + (f", {self.unknown} of unknown owner" if self.unknown else "")
        return f"staging: {len(self.removed)} folders of dead runs ({_mb(self.bytes)}){kept}"


def _tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _newest_mtime(path: Path) -> float:
    times = [path.stat().st_mtime]
    if path.is_dir():
        with os.scandir(path) as it:
            times += [e.stat(follow_symlinks=False).st_mtime for e in it]
    return max(times)


def sweep_staging(root: Path, retention_hours: float = DEFAULT_RETENTION_HOURS, dry_run: bool = False) -> SweepReport:
    """Remove ``<root>/_staging`` entries of runs that no longer run; never this process's or a live run's.

    Entries whose owner cannot be checked (another host's run folder, or a name of an older version) go only
    when nothing in them changed for ``retention_hours``.
    """
    rep = SweepReport()
    base = Path(root) / STAGING
    if not base.is_dir():
        return rep
    mine = owner_tag()
    for entry in sorted(base.iterdir()):
        alive = True if entry.name == mine else owner_alive(entry.name)
        if alive is None:
            try:
                old = time.time() - _newest_mtime(entry) > retention_hours * 3600
            except FileNotFoundError:
                continue
            if not old:
                rep.unknown += 1
                continue
        elif alive:
            rep.live += 1
            continue
        try:
            size = _tree_bytes(entry)
        except FileNotFoundError:
            continue
        if not dry_run:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        rep.removed.append(entry)
        rep.bytes += size
    if rep.removed:
        log.info("%s%s", "would remove: " if dry_run else "", rep.summary())
    return rep


# ---- the writer lock -------------------------------------------------------------------------------------

_HELD: dict[Path, list[int]] = {}  # data root -> [fd, depth]
_GUARD = threading.Lock()


def _lock_info(fd: int) -> dict:
    try:
        raw = os.pread(fd, 4096, 0)
        return json.loads(raw.decode()) if raw.strip() else {}
    except (OSError, ValueError):
        return {}


def _busy_message(root: Path, info: dict) -> str:
    if not info:
        return f"another prism run is writing {root} (it is starting; pid not yet recorded)"
    host = "" if info.get("host") == socket.gethostname() else f" on {info.get('host')}"
    cmd = f", `prism {info['command']}`" if info.get("command") else ""
    return f"another prism run is writing {root} (pid {info.get('pid')}{host}, since {info.get('since')}{cmd})"


def acquire_writer_lock(root: Path, command: str = "", sweep: bool = True) -> Path:
    """Take the data root's writer lock (re-entrant in one process) or raise :class:`WriterLockError`.

    With ``sweep``, the first taker then removes dead runs' staging folders (:func:`sweep_staging`); ``prism
    vacuum`` passes False and sweeps itself (dry-run aware, with its retention, in its report).
    Returns the resolved root, to pass to :func:`release_writer_lock`.
    """
    import fcntl

    root = Path(root).expanduser().resolve()
    with _GUARD:
        if root in _HELD:
            _HELD[root][1] += 1
            return root
        try:
            root.mkdir(parents=True, exist_ok=True)
            fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise PrismError(
                f"cannot open the writer lock of data root {root}: {e.strerror}",
                hint="data_root must be a folder this user can write",
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = _lock_info(fd)
            os.close(fd)
            raise WriterLockError(_busy_message(root, info)) from None
        except OSError as e:  # a file system without flock: go on, but say so
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            log.warning(
                "data root %s does not support file locks (%s): concurrent writers are not excluded", root, e.strerror
            )
        stale = _lock_info(fd)
        if stale:
            log.info("writer lock of %s taken over from pid %s (no longer running)", root, stale.get("pid"))
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command,
            "since": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        _HELD[root] = [fd, 1]
    if sweep:
        sweep_staging(root)
    return root


def release_writer_lock(root: Path) -> None:
    """Undo one :func:`acquire_writer_lock`; the last release empties the lock file and unlocks it."""
    import fcntl

    root = Path(root).expanduser().resolve()
    with _GUARD:
        held = _HELD.get(root)
        if held is None:
            return
        held[1] -= 1
        if held[1] > 0:
            return
        del _HELD[root]
        fd = held[0]
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


@contextmanager
def writer_lock(root: Path, command: str = "") -> Iterator[Path]:
    """``with writer_lock(settings.root):`` hold the data root's writer lock (for scripts and notebooks)."""
    held = acquire_writer_lock(root, command)
    try:
        yield held
    finally:
        release_writer_lock(held)


def lock_for_command(settings, command: str, sweep: bool = True) -> Path | None:
    """Take the writer lock for a ``prism`` command that writes with the delta-rs engine, before Spark starts.

    The delta-spark engine (Databricks) is left to Delta's own optimistic concurrency and the jobs'
    ``max_concurrent_runs: 1``; its data root may be a volume without file locks.
    """
    from prismatic.spark import on_databricks

    engine = settings.storage.engine
    if engine == "delta-spark" or (engine == "auto" and on_databricks()):
        return None
    return acquire_writer_lock(settings.root, command, sweep=sweep)


# ---- vacuum ----------------------------------------------------------------------------------------------


def _mb(n: int | None) -> str:
    return "? MB" if n is None else f"{n / 1e6:.1f} MB"


@dataclass
class VacuumReport:
    tables: list[Any] = field(default_factory=list)  # prismatic.tables.TableUpkeep
    staging: SweepReport = field(default_factory=SweepReport)
    dry_run: bool = False
    retention_hours: int = DEFAULT_RETENTION_HOURS

    @property
    def files(self) -> int:
        return sum(len(t.removed) for t in self.tables)

    @property
    def bytes(self) -> int | None:
        sizes = [t.bytes for t in self.tables]
        return None if any(b is None for b in sizes) else sum(sizes)

    def summary(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        return (
            f"{verb} {self.files} files ({_mb(self.bytes)}) no snapshot references, older than"
            f" {self.retention_hours} h, in {len(self.tables)} tables; {self.staging.summary()}"
        )


def vacuum(
    store,
    retention_hours: int = DEFAULT_RETENTION_HOURS,
    dry_run: bool = False,
    compact: bool = True,
    tables: Iterable[str] | None = None,
) -> VacuumReport:
    """Compact small files, then remove unreferenced files older than ``retention_hours`` in every table;
    remove dead runs' staging folders (those of unknown owner older than the retention too).

    Hold the writer lock around it (``prism vacuum`` does): compaction rewrites files a writer may be merging.

    Args:
        store: a :class:`prismatic.tables.TableStore`.
        retention_hours: files that stopped being referenced (or were never committed) less than this long ago
            stay, so time travel and readers of older snapshots keep working within it. 0 removes every file the
            current snapshot does not reference.
        dry_run: list what would go, change nothing (and do not compact).
        compact: rewrite small files of each partition into bigger ones first (delta-rs ``optimize.compact``,
            Databricks ``OPTIMIZE``); the rows do not change, the table gets a new version.
    """
    if retention_hours < 0:
        raise PrismError(f"--retention-hours {retention_hours} must be 0 or more", hint="the default is 168 (7 days)")
    rep = VacuumReport(dry_run=dry_run, retention_hours=int(retention_hours))
    for name in tables or store.names():
        if store.exists(name):
            rep.tables.append(store.vacuum(name, int(retention_hours), dry_run=dry_run, compact=compact))
    rep.staging = sweep_staging(store.settings.root, retention_hours=retention_hours, dry_run=dry_run)
    return rep
