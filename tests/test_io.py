"""Every file the package writes appears whole or not at all.

Real failures, no mocks: a write past the process's file-size limit (RLIMIT_FSIZE)
and a real SIGINT sent to a writing process. Mode-independent: runs once.
"""

import errno
import os
import signal
import subprocess
import sys

import pytest

from keras_attention._io import atomic_path, write_bytes, write_json

pytestmark = pytest.mark.run_once

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _leftovers(folder, keep):
    return sorted(name for name in os.listdir(folder) if name != keep)


def test_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    write_bytes(path, b"new contents")
    assert path.read_bytes() == b"new contents"
    assert _leftovers(tmp_path, "out.bin") == []


def test_a_failing_writer_leaves_the_previous_file(tmp_path):
    path = tmp_path / "model.keras"
    path.write_bytes(b"previous good file")
    with pytest.raises(ZeroDivisionError):
        with atomic_path(path) as temporary:
            with open(temporary, "wb") as handle:
                handle.write(b"half a fi")
            raise ZeroDivisionError("a failure half-way through the write")
    assert path.read_bytes() == b"previous good file"
    assert _leftovers(tmp_path, "model.keras") == []
    # Control: the same block without the failure does replace the file.
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as handle:
            handle.write(b"new")
    assert path.read_bytes() == b"new"


def test_a_file_size_limit_leaves_the_previous_file(tmp_path):
    path = tmp_path / "out.tflite"
    path.write_bytes(b"previous good file")
    script = f"""
import resource, signal, sys
sys.path.insert(0, {ROOT!r})
from keras_attention._io import write_bytes
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    write_bytes({str(path)!r}, b"x" * 100000, "keras_attention.tflite.convert")
except OSError as error:
    print("failed:", error.errno, error)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "failed: 27" in result.stdout, result.stdout + result.stderr  # EFBIG: the limit really hit
    # The error names the destination (as a full disk would), not the hidden temporary file.
    assert f"keras_attention.tflite.convert: cannot write {str(path)!r}: File too large" in result.stdout
    assert ".partial" not in result.stdout, result.stdout
    assert path.read_bytes() == b"previous good file"
    assert _leftovers(tmp_path, "out.tflite") == []


def test_ctrl_c_while_writing_leaves_the_previous_file(tmp_path):
    path = tmp_path / "report.json"
    path.write_bytes(b"{}")
    script = f"""
import sys, time
sys.path.insert(0, {ROOT!r})
from keras_attention._io import atomic_path
with atomic_path({str(path)!r}) as temporary:
    with open(temporary, "wb") as handle:
        handle.write(b'{{"partial": ')
        handle.flush()
        print("writing", flush=True)
        time.sleep(60)
"""
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "writing"
    partial = [name for name in os.listdir(tmp_path) if name != "report.json"]
    assert len(partial) == 1  # control: the half-written temporary file exists at this point
    process.send_signal(signal.SIGINT)
    process.wait(timeout=60)
    assert process.returncode != 0
    assert path.read_bytes() == b"{}"
    assert _leftovers(tmp_path, "report.json") == []


def test_a_place_that_cannot_be_written_names_the_destination(tmp_path):
    """The temporary file's name is the destination's plus ~20 characters: a name the file system still takes
    for the destination but not for it fails (ENAMETOOLONG) as a read-only folder would (EACCES, EROFS)."""
    path = tmp_path / ("m" * 236 + ".tflite")
    with pytest.raises(OSError, match=r"convert: cannot write '.*m\.tflite': File name too long") as caught:
        write_bytes(path, b"data", "keras_attention.tflite.convert")
    assert ".partial" not in str(caught.value) and caught.value.errno == errno.ENAMETOOLONG
    assert os.listdir(tmp_path) == []
    path.write_bytes(b"control: the destination's own name is fine")
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    try:
        if os.access(readonly, os.W_OK):  # root writes anyway: the name-length case above covers it
            return
        with pytest.raises(PermissionError, match=r"cannot write '.*readonly/out\.json': Permission denied"):
            write_json(readonly / "out.json", {"a": 1}, "keras_attention.tflite.verify")
    finally:
        readonly.chmod(0o755)


def test_an_error_about_another_file_is_left_as_it_is(tmp_path):
    with pytest.raises(FileNotFoundError) as caught:
        with atomic_path(tmp_path / "out.bin"):
            open(tmp_path / "missing_input.npy", "rb")  # the writer's own input, not the destination
    assert caught.value.filename == str(tmp_path / "missing_input.npy")


def test_json_that_cannot_be_serialised_writes_nothing(tmp_path):
    path = tmp_path / "report.json"
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("where, error", [("file_parent", NotADirectoryError), ("is_dir", IsADirectoryError)])
def test_impossible_destinations_are_named(tmp_path, where, error):
    (tmp_path / "a_file").write_bytes(b"")
    (tmp_path / "a_dir").mkdir()
    path = tmp_path / "a_file" / "out.bin" if where == "file_parent" else tmp_path / "a_dir"
    with pytest.raises(error, match="keras_attention.tflite.convert: .*"):
        write_bytes(path, b"data", "keras_attention.tflite.convert")


def test_save_overlays_is_atomic_and_checks_its_panels(tmp_path):
    import numpy as np

    from keras_attention import visualize

    images = np.random.default_rng(0).uniform(0, 1, (2, 8, 8, 3))
    with pytest.raises(ValueError, match="save_overlays: panel 'gate' has 1 maps for 2 images"):
        visualize.save_overlays(tmp_path / "x.png", images, [("gate", np.zeros((1, 4, 4)))])
    assert os.listdir(tmp_path) == []
    path = visualize.save_overlays(tmp_path / "x.png", images, [("gate", np.zeros((2, 4, 4)))])
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path) == ["x.png"]


def test_a_failed_demo_run_leaves_the_previous_run(tmp_path):
    """The demo stages its files and moves them in only at the end; a run failing on the way changes nothing."""
    out = tmp_path / "out"
    out.mkdir()
    previous = {name: f"previous {name}".encode() for name in ("model.keras", "model_int8.tflite", "report.json")}
    for name, data in previous.items():
        (out / name).write_bytes(data)
    (tmp_path / "data").mkdir()  # an empty image folder: the run fails after staging started
    result = subprocess.run(
        [sys.executable, "-m", "keras_attention.cli", "demo", "--data", str(tmp_path / "data"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert result.returncode == 2 and "no images in" in result.stderr, result.stderr[-2000:]
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == previous
    assert sorted(os.listdir(tmp_path)) == ["data", "out"]  # no staging folder left behind
