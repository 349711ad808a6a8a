"""File output helpers used by every tool that writes something.

    atomic_write(path, mode="wb")   context manager: a file object that becomes `path` only
                                    if the block succeeds
    atomic_path(path)               the same for writers that need a path (TFRecordWriter,
                                    cv2.imwrite): yields the temporary path to write to
    atomic_directory(path, overwrite)  a temporary folder that becomes `path` (a whole
                                    directory: an exported SavedModel) only on success
    Progress(total, desc)           "desc: i/total (x/s)" lines on stderr

A reader (an input pipeline globbing `train-*.tfrecord`, a second converter run, a crash
and a restart) must never see a half-written file: the data goes to a hidden temporary
file in the same directory (same filesystem, so the final rename is atomic), is flushed
to disk with fsync, and replaces the target with os.replace. On any failure the
temporary file is removed and the previous content of `path`, if any, is left as it was.
"""
import contextlib
import os
import shutil
import sys
import tempfile
import time

_TEMP_SUFFIX = ".tmp"


def _temp_name_in(directory, final_name):
    # Hidden and with a suffix of its own, so that globs such as "train-*.tfrecord" or
    # "*.png" never pick up a file that is still being written.
    handle, temp_path = tempfile.mkstemp(prefix=f".{final_name}.", suffix=_TEMP_SUFFIX,
                                         dir=directory)
    os.close(handle)
    return temp_path


def _creation_mode(final_path):
    # mkstemp creates 0600 files; an output file should get the permissions an ordinary
    # open() would give it (those of the file it replaces, else 0666 minus the umask).
    try:
        return os.stat(final_path).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_file(path):
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_directory(directory):
    # Makes the rename itself durable; not every platform can open a directory.
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def _remove_quietly(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


class PendingFile:
    """A temporary file that becomes `final_path` on commit() and vanishes on discard().

    For code that must publish several files together (the shards of one split): write
    all of them, then commit all of them.
    """

    def __init__(self, final_path):
        self.final_path = os.path.abspath(final_path)
        directory = os.path.dirname(self.final_path)
        os.makedirs(directory, exist_ok=True)
        self.temp_path = _temp_name_in(directory, os.path.basename(self.final_path))
        self.done = False

    def commit(self):
        if self.done:
            return
        _fsync_file(self.temp_path)
        os.chmod(self.temp_path, _creation_mode(self.final_path))
        os.replace(self.temp_path, self.final_path)
        _fsync_directory(os.path.dirname(self.final_path))
        self.done = True

    def discard(self):
        if self.done:
            return
        _remove_quietly(self.temp_path)
        self.done = True


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path; on success it replaces `path`, on failure it is removed."""
    pending = PendingFile(path)
    try:
        yield pending.temp_path
    except BaseException:
        pending.discard()
        raise
    try:
        pending.commit()
    except BaseException:
        pending.discard()
        raise


@contextlib.contextmanager
def atomic_write(path, mode="wb", encoding=None):
    """Opens a temporary file for writing; it replaces `path` only if the block succeeds.

    `mode` is "wb" or "w" (text, UTF-8 unless `encoding` says otherwise).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes whole files: mode must be 'w' or 'wb', "
                         f"got {mode!r}")
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    with atomic_path(path) as temp_path:
        with open(temp_path, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()


class DirectoryExistsError(FileExistsError):
    """atomic_directory's target exists and overwrite was not asked for."""


@contextlib.contextmanager
def atomic_directory(path, overwrite=False):
    """Yields an empty temporary folder beside `path`; it becomes `path` on success.

    On failure the temporary folder is deleted and `path` is untouched. With overwrite,
    an existing `path` is moved aside, replaced by the new folder, then deleted: a
    reader finds the old complete directory, or (for the instant between two renames)
    none, or the new complete one, never a half-written one.
    """
    path = os.path.abspath(path)
    parent, name = os.path.split(path)
    if os.path.exists(path) and not overwrite:
        raise DirectoryExistsError(f"{path} already exists")
    os.makedirs(parent, exist_ok=True)
    temp_dir = tempfile.mkdtemp(prefix=f".{name}.", suffix=_TEMP_SUFFIX, dir=parent)
    try:
        yield temp_dir
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    old_dir = None
    if os.path.exists(path):
        old_dir = tempfile.mkdtemp(prefix=f".{name}.", suffix=".old", dir=parent)
        os.rmdir(old_dir)
        os.replace(path, old_dir)
    # mkdtemp makes 0700 folders; give the one a plain os.makedirs would have.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temp_dir, 0o777 & ~umask)
    os.replace(temp_dir, path)
    _fsync_directory(parent)
    if old_dir is not None:
        shutil.rmtree(old_dir, ignore_errors=True)


class Progress:
    """Prints "desc: i/total (x.x/s)" to stderr at most every `every_seconds`, and at the end.

    A dependency-free stand-in for tqdm that also reads well in log files (no carriage
    returns). Use as a context manager or call close() to print the final line.
    """

    def __init__(self, total, desc, every_seconds=5.0, stream=None):
        self.total = total
        self.desc = desc
        self.every_seconds = every_seconds
        self.stream = stream if stream is not None else sys.stderr
        self.count = 0
        self._start = time.monotonic()
        self._last_print = self._start
        self._closed = False

    def update(self, n=1):
        self.count += n
        now = time.monotonic()
        if now - self._last_print >= self.every_seconds:
            self._print(now)

    def close(self):
        if not self._closed:
            self._print(time.monotonic())
            self._closed = True

    def line(self, now=None):
        now = time.monotonic() if now is None else now
        elapsed = max(now - self._start, 1e-9)
        total = "?" if self.total is None else self.total
        return f"{self.desc}: {self.count}/{total} ({self.count / elapsed:.1f}/s)"

    def _print(self, now):
        self._last_print = now
        print(self.line(now), file=self.stream, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False
