"""A run folder's record: who may write it, writing its files, reading them back.

A run folder (`gmix-train --output`) is written by one process at a time.
Two processes resuming the same killed run would otherwise both append to
history.csv and both count their epochs and seconds in results.json. The
owner holds an OS lock (`fcntl.flock`) on `LOCK_FILE` for the whole run;
the kernel releases it when the process ends, however it ends (SIGKILL
included), so a lock is never left stale and there is nothing to clean up.

Every file the package reads back goes through `read_json` (or names itself
the same way): a truncated or hand-edited file gives an error that says
which file it is and what to do, not a bare JSON or HDF5 error. Every file
the package writes into it (checkpoint.py's included) is written under a
`TEMP_PREFIX` name, flushed and renamed (`atomic_write_text`,
`replace_durably`), so a kill leaves the old file or the new one, never a
part of one.
"""

import contextlib
import csv
import errno
import json
import math
import os
import socket
import time

try:
    import fcntl
except ImportError:  # Windows: no flock; a run folder is then not locked.
    fcntl = None

LOCK_FILE = ".lock"
# Files being written are named so until they are complete (then renamed);
# what a kill leaves under this prefix is never read, and is swept away.
TEMP_PREFIX = ".tmp-"


class RunFolderInUseError(RuntimeError):
    """Raised when another process holds the run folder."""


# The errors of a write that failed for want of room: no space left on the
# device, a disk quota exceeded, a file-size limit (RLIMIT_FSIZE).
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class RecordWriteError(OSError):
    """A file of the run's record could not be written (a full disk, a
    read-only folder); the message says what is intact and what to do."""

    def __init__(self, error_number, message):
        super().__init__(error_number, message)
        self.message = message

    def __str__(self):
        return self.message


# The errors of a folder that may not be written: a read-only file system,
# missing permissions.
READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


def write_failure(error):
    """What went wrong in an OSError of a write, in words (a full disk named as such)."""
    if error.errno in DISK_FULL_ERRNOS:
        return f"the disk is full ({error.strerror})"
    return error.strerror or str(error)


def record_write_error(error, folder):
    """A `RecordWriteError` saying what to do about `error` in run folder
    `folder`, or None when `error` is not a full or read-only disk."""
    where = os.fspath(error.filename) if error.filename else folder
    root = os.path.abspath(folder)
    inside = os.path.commonpath([os.path.abspath(where), root]) == root
    if error.errno in DISK_FULL_ERRNOS:
        fix = "make room, then continue the run with --resume"
    elif error.errno in READ_ONLY_ERRNOS and inside:  # not a data file we may not read
        fix = f"choose an --output on a writable disk, or make {folder} writable"
    else:
        return None
    return RecordWriteError(
        error.errno, f"Cannot write the run's record at {where}: {write_failure(error)}: {fix}."
    )


def _holder_text():
    since = time.strftime("%Y-%m-%d %H:%M:%S")
    return f"process {os.getpid()} on host {socket.gethostname()}, since {since}"


def lock_file(path):
    """Takes the OS lock (`fcntl.flock`) on `path` without waiting.

    The file is created if missing, and this process's name is written into
    it once the lock is held.

    Args:
        path: the lock file.

    Returns:
        The open file descriptor, which holds the lock until it is closed or
        the process ends (the kernel releases it then, SIGKILL included);
        `None` when another process (or another descriptor of this one)
        holds it: `lock_holder(path)` names that process.
    """
    # Opened without truncating: the holder's name must survive our look.
    try:
        fd, writable = os.open(path, os.O_RDWR | os.O_CREAT, 0o644), True
    except OSError as error:
        if error.errno not in READ_ONLY_ERRNOS or not os.path.exists(path):
            raise
        # A read-only folder (a finished run on a read-only disk): flock
        # works on a descriptor opened for reading; the name stays unwritten.
        fd, writable = os.open(path, os.O_RDONLY), False
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
        if writable:
            os.ftruncate(fd, 0)
            os.pwrite(fd, _holder_text().encode("utf-8"), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def lock_holder(path):
    """The process named in the lock file `path`, as a phrase."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read(4096).strip()
    except OSError:
        text = ""
    # The holder writes its name just after taking the lock: it may not be
    # there yet when we look.
    return text or "a process that has not written its id yet"


@contextlib.contextmanager
def hold_run_folder(folder):
    """Holds `folder` for this process until the `with` block ends.

    The lock is taken without waiting: a run folder in use is a mistake to
    report (the same --output twice, a second --resume), not a queue.

    Args:
        folder: an existing run folder.

    Raises:
        RunFolderInUseError: another process (or another `with` block of
            this one) holds the folder; the message names its pid and host.

    Example:

    >>> with hold_run_folder("runs/dgmix"):
    ...     train_and_write_the_record()
    """
    path = os.path.join(folder, LOCK_FILE)
    if os.path.isdir(path):
        raise ValueError(
            f"{path} is a folder, where a run keeps its lock file: nothing of the "
            "run is in it. Delete it (or move it away), then try again."
        )
    fd = lock_file(path)
    if fd is None:
        raise RunFolderInUseError(
            f"{folder} is in use by {lock_holder(path)}: a run folder is "
            "written by one process at a time. Wait for that process to "
            "end (or stop it), then try again; its lock goes with it, so "
            "there is nothing to delete."
        )
    try:
        yield
    finally:
        # Closing the only descriptor releases the lock. The file stays:
        # deleting it would let a waiting process lock a file no one else sees.
        os.close(fd)


def check_output_folder(path):
    """Refuses an `--output` that names an existing file, or lies under one:
    a run's record is a folder."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(
            f"--output {path} is a file, not a folder: name a new folder (or an "
            "existing run folder) for the record."
        )
    ancestor = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise ValueError(
            f"--output {path} lies under {ancestor}, which is a file, not a folder: "
            "name a folder whose parents are folders."
        )


def discard_unstarted_run(folder, created):
    """Removes what a new run wrote into `folder` when it stopped before training.

    A new run writes config.json (and holds `.lock`) before it loads its
    data; refused while loading (a bad file, a bad folder), it would leave a
    folder that looks like a run. Only a folder that holds nothing else is
    cleaned: config.json is removed, and `.lock` and the folder too when
    this run created the folder. Call it after the lock is released.
    """
    try:
        names = set(os.listdir(folder))
    except OSError:
        return
    if not names <= {"config.json", LOCK_FILE}:
        return  # training started (history, backup, TensorBoard): a run to resume
    for name in ["config.json"] + ([LOCK_FILE] if created else []):
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(folder, name))
    if created:
        with contextlib.suppress(OSError):
            os.rmdir(folder)


def check_writable(folder):
    """Refuses, up front, a run folder that cannot be written (a read-only
    disk, missing permissions): TensorFlow's event writer and h5py would
    otherwise fail deep inside the run, with their own errors."""
    probe = os.path.join(folder, f"{TEMP_PREFIX}probe-{os.getpid()}")
    try:
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as error:
        raise record_write_error(error, folder) or error from error


def read_json(path, fix):
    """The JSON object in `path`.

    Args:
        path: the file.
        fix: what the user should do if the file is missing or unreadable,
            e.g. "delete the backup folder to start over".

    Raises:
        FileNotFoundError: `path` does not exist; the message names it and `fix`.
        ValueError: `path` is not a JSON object (truncated by a kill, edited
            by hand); the message names it and `fix`.
    """
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing: {fix}") from None
    except (ValueError, OSError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path} is unreadable (truncated? {error}): {fix}") from error
    if not isinstance(value, dict):
        raise ValueError(f"{path} is unreadable (it holds no JSON object): {fix}")
    return value


def replace_durably(tmp, path):
    """Flushes the finished file `tmp` to disk, then renames it to `path` (atomic)."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fsync_directory(folder):
    """Flushes `folder`'s entries (the renames in it) to disk where the platform allows."""
    # Makes the renames themselves durable (a power cut, not just a kill).
    # Not supported on every platform (Windows): then the OS decides.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path, text):
    """Writes `text` to `path` so that `path` holds the old or the new text, never a part."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, TEMP_PREFIX + os.path.basename(path))
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    replace_durably(tmp, path)
    fsync_directory(folder)


def read_history(path):
    """The rows of a `CSVLogger` file as a list of dicts of floats (`epoch` an int)."""
    if not os.path.exists(path):
        return []
    fix = "repair or delete the damaged rows, or delete the run folder to train again"
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (csv.Error, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is unreadable ({error}): {fix}.") from error

    def number(text):
        try:
            return float(text)
        except (TypeError, ValueError):
            return math.nan

    def epoch(text, line):
        try:
            return int(text)
        except (TypeError, ValueError):
            raise ValueError(
                f"{path} is unreadable: row {line} has the epoch {text!r}, "
                f"not a whole number: {fix}."
            ) from None

    return [
        {key: epoch(value, line) if key == "epoch" else number(value) for key, value in row.items()}
        for line, row in enumerate(rows, start=2)
    ]
