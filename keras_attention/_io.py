"""Atomic file writes: every file the package writes appears whole or not at all.

Each writer fills a temporary file in the destination's folder (same file
system, so the final `os.replace` is atomic) and renames it over the
destination only when it was written completely. A failure or Ctrl-C on the
way leaves the previous file, if any, untouched, and removes the temporary one.
"""

import contextlib
import json
import os
import shutil
import tempfile


def check_folder(directory, caller):
    """Raises a clear error when `directory` cannot be a folder (it, or a parent of it, is a file)."""
    parent = os.path.abspath(os.fspath(directory))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise NotADirectoryError(
            f"{caller}: cannot write into {os.fspath(directory)!r}: {parent!r} is a file, not a folder."
        )


def check_destination(path, caller, allow_directory=False):
    """Raises a clear error, before any work, when a file cannot be written at `path`."""
    path = os.fspath(path)
    if os.path.isdir(path) and not allow_directory:
        raise IsADirectoryError(f"{caller}: {path!r} is a directory; expected a file path.")
    check_folder(os.path.dirname(os.path.abspath(path)), caller)
    return path


def _naming_destination(error, temporary, path, caller):
    """`error` (an OSError while writing `path` through `temporary`) retold naming `path`, not the hidden file.

    `temporary` is None when creating it failed. An error about another file
    (a writer reading one of its inputs) is returned as it is.
    """
    filename = error.filename
    if isinstance(filename, (str, bytes, os.PathLike)):
        filename = os.fsdecode(os.fspath(filename))
        hidden = temporary or os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.")
        if not (filename.startswith(hidden) or filename == path):
            return error
    elif error.errno is None and (temporary is None or temporary not in str(error)):
        return error  # no errno, no file name of ours: not the write's own failure
    reason = f"{error.strerror} (errno {error.errno})" if error.errno is not None and error.strerror else str(error)
    if temporary is not None:
        reason = reason.replace(temporary, path)
    message = f"{caller}: cannot write {path!r}: {reason}. The previous file, if any, is unchanged."
    try:
        return type(error)(error.errno, message) if error.errno is not None else type(error)(message)
    except Exception:  # noqa: BLE001 - an OSError subclass with a constructor of its own
        return OSError(error.errno, message)


@contextlib.contextmanager
def atomic_path(path, caller="keras_attention", allow_directory=False):
    """Yields a temporary path beside `path` (same extension); renames it to `path` if the block succeeds.

    For writers that take a file name (Keras' `model.save`, Matplotlib's
    `savefig`). The temporary name keeps the extension, which such writers
    read to pick a format. With `allow_directory`, the writer may create a
    folder (a SavedModel); an existing folder at `path` is swapped out only
    once the new one is complete.
    """
    path = check_destination(path, caller, allow_directory)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base = os.path.basename(path)
    extension = os.path.splitext(base)[1]
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{base}.", suffix=f".partial{extension}", dir=directory)
    except OSError as error:  # a read-only folder, a full disk: named as the destination, not the hidden file
        raise _naming_destination(error, None, path, caller) from None
    os.close(handle)
    os.remove(temporary)  # the writer creates it (Keras refuses some existing paths)
    try:
        try:
            yield temporary
        except OSError as error:
            raise _naming_destination(error, temporary, path, caller) from None
        if not os.path.exists(temporary):
            raise RuntimeError(f"{caller}: the writer did not create {path!r}.")
        if os.path.isdir(temporary) and os.path.isdir(path):
            previous = tempfile.mkdtemp(prefix=f".{base}.", suffix=".previous", dir=directory)
            os.replace(path, os.path.join(previous, base))
            os.replace(temporary, path)
            shutil.rmtree(previous, ignore_errors=True)
        else:
            try:
                os.replace(temporary, path)
            except OSError as error:
                raise _naming_destination(error, temporary, path, caller) from None
    finally:
        if os.path.isdir(temporary):
            shutil.rmtree(temporary, ignore_errors=True)
        elif os.path.exists(temporary):
            os.remove(temporary)


def write_bytes(path, data, caller="keras_attention"):
    """Writes `data` to `path` atomically; returns the path."""
    with atomic_path(path, caller) as temporary:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    return os.fspath(path)


def write_json(path, payload, caller="keras_attention"):
    """Writes `payload` as indented JSON to `path` atomically; returns the path."""
    text = json.dumps(payload, indent=2)  # serialise first: a bad value fails before anything is written
    return write_bytes(path, text.encode("utf-8"), caller)
