"""File output helpers used by every tool that writes something.

    atomic_write(path, mode="wb")   context manager: a file object that becomes `path` only
                                    if the block succeeds
    atomic_path(path)               the same for writers that need a path (TFRecordWriter,
                                    cv2.imwrite): yields the temporary path to write to
    atomic_directory(path, overwrite)  a temporary folder that becomes `path` (a whole
                                    directory: an exported SavedModel) only on success
    Progress(total, desc, unit=...) one live "desc: i/total unit, rate, ETA" line on
                                    stderr (redrawn on a terminal, a line every so
                                    often in a log file)

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


def format_duration(seconds):
    """3725 -> "1:02:05", 75 -> "1:15": hours only when there are some."""
    seconds = int(round(max(seconds, 0)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def format_rate(per_second, unit=""):
    """12.34 -> "12.3 steps/s", 0.6617 -> "0.66 steps/s": the digits that say something."""
    if per_second >= 10:
        number = f"{per_second:.0f}"
    elif per_second >= 1:
        number = f"{per_second:.1f}"
    else:
        number = f"{per_second:.2g}"
    return f"{number} {unit}/s" if unit else f"{number}/s"


def _format_field(value):
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# Progress lines currently drawn in place on a terminal (see clear_live_progress).
_LIVE = []

# On a terminal, redraw at most this often; elsewhere, a new line at most this often.
REDRAW_SECONDS = 0.25
LOG_EVERY_SECONDS = 30.0


def clear_live_progress():
    """Erases the progress lines drawn in place, so that another line can be printed
    (libs/base/console.py calls it before each log record); they come back at their next
    update."""
    for progress in list(_LIVE):
        progress.erase()


class Progress:
    """One live progress line: "desc: i/total unit, rate, ETA, fields".

        training: 480/960 steps, 12 steps/s, ETA 0:39, loss 0.9885

    On a terminal (the stream's isatty(), or `tty`) the line is redrawn in place with a
    carriage return, at most every REDRAW_SECONDS. Elsewhere (a log file, CI) carriage
    returns would pile up, so a new line is printed at most every `every_seconds`
    (default LOG_EVERY_SECONDS). Either way close() (or the end of a `with` block)
    prints the final line, with the time taken instead of the ETA.

    The rate counts what this process did since start (or since begin_at(count) for
    work that resumes: a training run restarted at step 400 shows 400/960 but does not
    credit itself with those 400 steps). The ETA is what is left at that rate. Fields
    given to update() (e.g. loss=0.98) follow the ETA. `clock` (seconds, monotonic) is
    injectable for tests.
    """

    def __init__(self, total, desc, every_seconds=None, stream=None, unit="",
                 clock=time.monotonic, tty=None):
        self.total = total
        self.desc = desc
        self.unit = unit
        self.every_seconds = LOG_EVERY_SECONDS if every_seconds is None else every_seconds
        self.stream = stream if stream is not None else sys.stderr
        self.tty = _is_terminal(self.stream) if tty is None else bool(tty)
        self.clock = clock
        self.count = 0
        self.fields = {}
        self._initial = 0
        self._start = clock()
        self._last_draw = self._start
        self._drawn_width = 0       # characters of the line now drawn in place
        self._closed = False

    def begin_at(self, count):
        """Restarts the clock with `count` already done before (not counted in the rate)."""
        self.count = self._initial = count
        self._start = self._last_draw = self.clock()

    def update(self, n=1, **fields):
        self.count += n
        self.fields.update(fields)
        now = self.clock()
        interval = REDRAW_SECONDS if self.tty else self.every_seconds
        if now - self._last_draw >= interval or (self.tty and not self._drawn_width):
            self._draw(now)

    def close(self):
        if not self._closed:
            self._draw(self.clock(), final=True)
            self._closed = True

    def rate(self, now=None):
        now = self.clock() if now is None else now
        return (self.count - self._initial) / max(now - self._start, 1e-9)

    def line(self, now=None, final=False):
        now = self.clock() if now is None else now
        total = "?" if self.total is None else self.total
        unit = f" {self.unit}" if self.unit else ""
        parts = [f"{self.desc}: {self.count}/{total}{unit}",
                 format_rate(self.rate(now), self.unit)]
        if final:
            parts.append(f"took {format_duration(now - self._start)}")
        elif self.total is not None:
            rate = self.rate(now)
            left = max(self.total - self.count, 0)
            parts.append(f"ETA {format_duration(left / rate)}" if rate > 0 else "ETA ?")
        parts.extend(f"{name} {_format_field(value)}" for name, value in self.fields.items())
        return ", ".join(parts)

    def erase(self):
        if self._drawn_width:
            self.stream.write("\r" + " " * self._drawn_width + "\r")
            self.stream.flush()
            self._drawn_width = 0
            if self in _LIVE:
                _LIVE.remove(self)

    def _draw(self, now, final=False):
        self._last_draw = now
        text = self.line(now, final)
        if self.tty:
            padding = " " * max(self._drawn_width - len(text), 0)
            self.stream.write("\r" + text + padding + ("\n" if final else ""))
            self._drawn_width = 0 if final else len(text)
            if final and self in _LIVE:
                _LIVE.remove(self)
            elif not final and self not in _LIVE:
                _LIVE.append(self)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False


def _is_terminal(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):   # no isatty, or a closed stream
        return False
