"""Locks that die with their holder: one live job per name, one live job per output folder.

A lock is an flock on a file opened without following symlinks, in a folder that must be
this user's and writable by nobody else: in a shared /tmp another user could otherwise plant
the folder, or a symlink at the lock's name, and make a job overwrite any file it can write.
"""
from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

from gadei.job import JobError


def private_dir(path: Path) -> Path:
    """`path` as a folder of this user's that nobody else can write (made 0700 if missing)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = os.lstat(path)
    why = None
    if not stat.S_ISDIR(st.st_mode):
        why = "is not a folder (a symlink?)"
    elif st.st_uid != os.getuid():
        why = f"belongs to uid {st.st_uid}, not to you ({os.getuid()})"
    elif st.st_mode & 0o022:
        why = f"is writable by others (mode {stat.S_IMODE(st.st_mode):o})"
    if why:
        raise JobError(f"refusing the lock folder {path}: it {why}. Remove it, or set XDG_RUNTIME_DIR to "
                       "a folder of your own")
    return path


def job_lock_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base:
        return private_dir(Path(base) / "gadei-locks")
    return private_dir(private_dir(Path(f"/tmp/gadei-{os.getuid()}")) / "gadei-locks")


def hold(path: Path, busy: str):
    """Take the lock at `path` and write who holds it; JobError(`busy` + the holder) if taken."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:     # ELOOP: a symlink at the lock's name
        raise JobError(f"cannot open the lock {path}: {e.strerror} (a symlink there? remove it)") from None
    f = os.fdopen(fd, "r+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = f.read().strip() or "another process"
        f.close()
        raise JobError(f"{busy} ({holder})") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}")
    f.flush()
    return f
