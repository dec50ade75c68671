"""Files and folders that survive crashes and full disks.

- `write_atomic`: a file written under a temporary name (`.NAME.tmp-PID`), synced, renamed.
- `AtomicFolder`: a folder built under `.NAME.tmp-PID` and renamed into place when complete.
- `clean_stale`: temporaries that a killed process left (its PID is gone) are removed on the next
  write to the same place, and said so; an interrupted replacement is rolled back.
- `disk_full` / `check_free`: a full disk is an error naming the path and the bytes needed.
- `RunLock`: one process at a time in a run folder (`flock`, released by the kernel when the holder
  dies, so a killed run never leaves a lock behind).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)$")


class _PlainOSError(OSError):
    def __str__(self):                  # the message alone, without "[Errno N]"
        return self.strerror or super().__str__()


class DiskFullError(_PlainOSError):
    """No space left where an output goes; the message names the path and the bytes needed."""


class RunLockedError(_PlainOSError):
    """Another live process holds the run folder."""


def notify(msg: str):
    """One line to stderr for things a user should know but that are not errors."""
    print(f"evollm: {msg}", file=sys.stderr, flush=True)


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


def parse_size(text) -> int:
    """Bytes of a size written as 80GB, 500MB, 1.5GiB or a plain number; ValueError otherwise."""
    units = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
             "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "TIB": 1024**4}
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return int(text)
    t = str(text).strip().upper().replace(" ", "")
    num = t.rstrip("KMGTIB")
    try:
        return int(float(num) * units[t[len(num):]])
    except (ValueError, KeyError):
        raise ValueError(f"not a size: {text!r} (e.g. 80GB, 500MB)") from None


def is_leftover(name: str) -> bool:
    """Whether a file name is one of our temporaries (`.NAME.tmp-PID`, `.NAME.old-PID`)."""
    return _LEFTOVER.match(name) is not None


def final_name(path) -> Path:
    """The path a path inside temporaries (`.NAME.tmp-PID/...`) will have once they are renamed."""
    return Path(*[m["name"] if (m := _LEFTOVER.match(part)) else part for part in Path(path).parts])


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _size(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def clean_stale(parent: Path, name: str | None = None) -> list:
    """Remove `.NAME.tmp-PID` / `.NAME.old-PID` entries of `parent` whose process is gone (only those of
    `name` when given). If a replacement was interrupted after the old folder was moved aside and
    before the new one was in place, the old one is put back."""
    parent = Path(parent)
    removed = []
    if not parent.is_dir():
        return removed
    for p in sorted(parent.iterdir()):
        m = _LEFTOVER.match(p.name)
        if not m or (name is not None and m["name"] != name) or _alive(int(m["pid"])):
            continue
        target = parent / m["name"]
        if m["kind"] == "old" and not target.exists():
            os.rename(p, target)
            notify(f"restored {target} from {p.name}: a replacement of it was interrupted "
                   f"(process {m['pid']} is gone)")
            continue
        size = _size(p)
        shutil.rmtree(p) if p.is_dir() else p.unlink()
        removed.append(p)
        notify(f"removed {p} ({human(size)}), left by an interrupted write of process {m['pid']}")
    return removed


def _free(path: Path) -> int:
    p = Path(path).absolute()
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def check_free(path, needed: int, what: str = "output"):
    """Refuse to start writing `needed` bytes under `path` when its disk has less free."""
    free = _free(path)
    if needed > free:
        raise DiskFullError(errno.ENOSPC, f"not enough disk space for the {what} {final_name(path)}: it needs about "
                            f"{human(needed)}, {human(free)} is free there; free some space or choose "
                            "another folder")


@contextmanager
def disk_full(path, needed: int | None = None):
    """Turn ENOSPC/EDQUOT raised inside into a DiskFullError naming `path` (and what it needed)."""
    try:
        yield
    except OSError as e:
        if not _is_full(e):
            raise
        raise _full(e, path, needed) from None


def _is_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT) and not isinstance(e, DiskFullError)


def _full(e: OSError, path, needed: int | None = None) -> DiskFullError:
    need = f" (it needs about {human(needed)})" if needed else ""
    return DiskFullError(e.errno, f"no space left on the disk while writing {final_name(path)}{need}; "
                         f"{human(_free(path))} is free there; nothing was replaced")


def write_atomic(path, data) -> None:
    """Write `data` (bytes or str) to `path` through a synced temporary file and a rename."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with disk_full(path, len(raw)), open(tmp, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def append_line(fd: int, line: str, path) -> None:
    """Append one line to the file open as `fd` (O_APPEND), unbuffered and synced: after a kill the
    file ends with whole lines or one cut line; a full disk is a DiskFullError naming `path`."""
    data = (line.rstrip("\n") + "\n").encode()
    with disk_full(path, len(data)):
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)


class AtomicFolder:
    """A temporary sibling folder that replaces ``target`` only on success.

    Refuses an existing ``target`` unless ``force``; with ``force`` the old folder is removed only
    after the new one is complete. On an exception (or a full disk, reported as such) the temporary
    folder is deleted and ``target`` is left as it was; temporaries of killed processes are removed.
    """

    def __init__(self, target, force: bool = False):
        self.target = Path(target)
        self.force = force
        clean_stale(self.target.parent, self.target.name)
        if self.target.exists() and not force:
            raise FileExistsError(
                f"output folder {self.target} already exists; pass --force to replace it "
                "(it is replaced only once the new output is complete)")
        self.tmp = self.target.parent / f".{self.target.name}.tmp-{os.getpid()}"

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if _is_full(exc):
                raise _full(exc, self.target) from None
            return False
        old = None
        if self.target.exists():
            old = self.target.parent / f".{self.target.name}.old-{os.getpid()}"
            os.rename(self.target, old)
        os.rename(self.tmp, self.target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return False


class RunLock:
    """An exclusive lock on a run folder (`FOLDER/run.lock` holds the PID and command of the holder)."""

    def __init__(self, folder):
        self.path = Path(folder) / "run.lock"
        self.fd = None

    def acquire(self) -> "RunLock":
        import fcntl
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "another process"
            os.close(fd)
            pid = holder.split()[0] if holder.split() and holder.split()[0].isdigit() else None
            raise RunLockedError(errno.EBUSY, f"run folder {self.path.parent} is in use by process "
                                 f"{holder}; wait for it to end{f' or stop it (kill {pid})' if pid else ''}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} ({' '.join(sys.argv)[:200]})\n".encode())
        self.fd = fd
        return self

    def release(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
