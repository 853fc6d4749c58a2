"""Keeps TensorFlow's and LiteRT's C++ log lines off the `keras-attention` command's stderr.

TensorFlow 2.21 logs through absl before `absl::InitializeLog()` runs, which
`TF_CPP_MIN_LOG_LEVEL` does not reach ("I0000 ... oneDNN custom operations are
on", "Could not find cuda drivers"), and the converter and the interpreter print
their own lines ("fully_quantize: 0, ...", "INFO: Created TensorFlow Lite XNNPACK
delegate"). They are written to file descriptor 2 by C++ code, so the command
points descriptor 2 at a pipe and forwards every line but those. It has to
happen before TensorFlow is imported, that is before the package's own imports:
`keras_attention/__init__.py` calls `quiet_if_the_command()` first. Python code
that imports the package is left alone; `keras-attention --verbose` shows all.
"""

import atexit
import os
import re
import sys
import threading

NATIVE_LOG_LINE = re.compile(
    rb"^(?:[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.]+:\d+\]"  # absl: I0000 00:00:1795487429.264687 16596 port.cc:153]
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|To enable the following instructions: .* rebuild TensorFlow"
    rb"|INFO: Created TensorFlow Lite .*delegate"
    rb"|fully_quantize: \d+, inference_type: )"
)


def _is_the_command():
    script = os.path.basename(sys.argv[0]) if sys.argv else ""
    module = getattr(sys, "orig_argv", [])[1:3] == ["-m", "keras_attention.cli"]
    return (script == "keras-attention" or module) and "--verbose" not in sys.argv


def quiet_if_the_command():
    """Filters descriptor 2 when this process is `keras-attention` (or `python -m keras_attention.cli`)."""
    if _is_the_command():
        filter_native_logs()


def filter_native_logs():
    """From now until exit, stderr lines that are C++ log lines are dropped; the rest pass through."""
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward():
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                if not NATIVE_LOG_LINE.match(line):
                    os.write(original, line)

    thread = threading.Thread(target=forward, name="native-log-filter", daemon=True)
    thread.start()

    def restore():
        # Hand descriptor 2 back (closing the pipe's last write end), then let the thread drain it.
        sys.stderr.flush()
        os.dup2(original, 2)
        thread.join(timeout=5)

    atexit.register(restore)
