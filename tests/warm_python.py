"""Start the project's scripts as real processes without paying Python's start-up each time.

A new interpreter spends about 5.5 CPU-seconds on this machine importing torch, torchvision (through
torchmetrics) and Lightning before ``train.py`` reads its first option, and the suite starts about a hundred
of them: half of the end-to-end tests' time. A *warm interpreter* (one per test process, started on first
use) imports those libraries once and then forks a child for each command. The child is a real process of its
own (its own pid and session, so ``os.killpg`` and SIGKILL work as on any command), its standard streams are
the caller's pipes or files, its working folder, environment and ``sys.argv`` are the caller's, and it runs the
script or module as ``__main__``, exactly as ``python <script> …`` / ``python -m <module> …`` would. Every
child forks from the same freshly imported state: nothing one command does is seen by the next.

:func:`popen` and :func:`run` take the arguments of :class:`subprocess.Popen` and :func:`subprocess.run`.
They use the warm interpreter for ``[sys.executable, (-u,) script.py | -m module, …]`` and fall back to a
fresh interpreter for anything else (``-c`` code, other programs, another ``PYTHONPATH``, which the
non-editable install test sets), and everywhere when ``LFICAM_TEST_FRESH_PYTHON=1``. What a fresh start alone
shows stays tested in fresh interpreters: the installed commands (tests/test_install.py), DDP's second rank
(Lightning starts it with ``sys.executable``), the README driver and the browser tests.

The server (``python -m tests.warm_python <socket>``) is single-threaded on purpose: forking a process that
runs other threads can leave the child holding a lock nobody will release.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

#: What every command imports before it reads its options; the warm interpreter imports it once.
PRELOAD = (
    "torch",
    "torchvision",
    "lightning.pytorch",
    "hydra",
    "omegaconf",
    "lficam.cli",
    "lficam.training.task",
)


# ---------------------------------------------------------------------------------------------------- server


def _child(request: dict[str, Any], fds: list[int]) -> None:
    """In the forked child: become the command of ``request`` and never return."""
    code = 1
    try:
        os.setsid()  # its own session and process group, as start_new_session=True gives
        for target, fd in zip((0, 1, 2), fds, strict=True):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        threads = os.environ.get("OMP_NUM_THREADS")
        if threads and threads.isdigit():
            import torch

            torch.set_num_threads(int(threads))  # torch read the server's value when it was imported
        # a fresh interpreter's streams: line-buffered so that a caller reading the pipe sees each line
        sys.stdout.reconfigure(line_buffering=True)
        sys.stderr.reconfigure(line_buffering=True)
        import runpy

        argv = request["argv"]
        try:
            if argv[0] == "-m":
                sys.argv = [argv[1], *argv[2:]]
                sys.path[0] = os.getcwd()
                runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
            else:
                script = os.path.abspath(argv[0])
                sys.argv = [argv[0], *argv[1:]]
                sys.path[0] = os.path.dirname(script)
                runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as stop:
            if stop.code is None:
                code = 0
            elif isinstance(stop.code, int):
                code = stop.code
            else:
                print(stop.code, file=sys.stderr)
                code = 1
        except KeyboardInterrupt:
            code = 130
        except BaseException:  # what the interpreter would print for an uncaught exception
            import traceback

            traceback.print_exc()
            code = 1
        import atexit as child_atexit

        child_atexit._run_exitfuncs()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve(socket_path: str) -> None:
    """Import :data:`PRELOAD`, then fork one child per request until the socket's peer (the tests) is gone."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    import threading

    if threading.active_count() != 1:  # a fork would copy a lock another thread may hold
        raise RuntimeError(f"importing {PRELOAD} started {threading.active_count() - 1} thread(s)")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(64)
    print("ready", flush=True)
    parent = os.getppid()
    waiting: dict[int, socket.socket] = {}  # child pid -> the connection its exit status goes back on
    while True:
        ready, _, _ = select.select([listener], [], [], 0.05)
        if ready:
            connection, _ = listener.accept()
            message, fds, _, _ = socket.recv_fds(connection, 1 << 20, 3)
            request = json.loads(message.decode())
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                listener.close()
                connection.close()
                _child(request, fds)
            for fd in fds:
                os.close(fd)
            connection.sendall(json.dumps({"pid": pid}).encode() + b"\n")
            waiting[pid] = connection
        while waiting:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            connection = waiting.pop(pid, None)
            if connection is not None:
                with contextlib.suppress(OSError):  # the caller may be gone
                    connection.sendall(
                        json.dumps({"returncode": os.waitstatus_to_exitcode(status)}).encode() + b"\n"
                    )
                connection.close()
        if os.getppid() != parent:  # the test process died (we were reparented): nobody will ask again
            return


# ---------------------------------------------------------------------------------------------------- client


class _Server:
    """The warm interpreter of this test process, started on first use and stopped when the process ends."""

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="lficam-warm-")
        self.path = os.path.join(self.folder, "socket")
        env = {**os.environ, "WANDB_MODE": "offline"}
        self.env_pythonpath = env.get("PYTHONPATH")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.warm_python", self.path],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        line = self.process.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"the warm interpreter did not start: {line!r}")
        atexit.register(self.stop)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        try:
            os.unlink(self.path)
            os.rmdir(self.folder)
        except OSError:
            pass


_server: _Server | None = None


def _get_server() -> _Server:
    global _server
    if _server is None or _server.process.poll() is not None:
        _server = _Server()
    return _server


class WarmProcess:
    """The part of :class:`subprocess.Popen` the tests use, for a child of the warm interpreter."""

    def __init__(self, request: dict[str, Any], stdin: Any, stdout: Any, stderr: Any, text: bool) -> None:
        self.args = request["argv"]
        self.returncode: int | None = None
        self.stdin = None
        self.stdout = self.stderr = None
        to_close: list[int] = []

        def _stream(spec: Any, default: int, mode: str) -> int:
            if spec is None:
                return default
            if spec == subprocess.DEVNULL:
                fd = os.open(os.devnull, os.O_RDWR)
                to_close.append(fd)
                return fd
            if spec == subprocess.PIPE:
                read, write = os.pipe()
                to_close.append(write)
                handle = os.fdopen(read, "r" if text else "rb", **({"errors": "replace"} if text else {}))
                if mode == "out":
                    self.stdout = handle
                else:
                    self.stderr = handle
                return write
            return spec if isinstance(spec, int) else spec.fileno()

        in_fd = _stream(stdin if stdin is not None else subprocess.DEVNULL, 0, "in")
        out_fd = _stream(stdout, 1, "out")
        err_fd = out_fd if stderr == subprocess.STDOUT else _stream(stderr, 2, "err")
        self._connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._connection.connect(_get_server().path)
        socket.send_fds(self._connection, [json.dumps(request).encode()], [in_fd, out_fd, err_fd])
        for fd in to_close:
            os.close(fd)
        self._buffer = b""
        self.pid = int(json.loads(self._status_line(None))["pid"])

    def _status_line(self, timeout: float | None) -> str | None:
        """The server's line with the exit status, or None when ``timeout`` seconds pass first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            readable, _, _ = select.select([self._connection], [], [], left)
            if not readable:
                return None
            data = self._connection.recv(4096)
            if not data:
                raise RuntimeError(f"the warm interpreter stopped while {self.args[:2]} ran")
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def poll(self) -> int | None:
        if self.returncode is None:
            line = self._status_line(0)
            if line is not None:
                self._finish(line)
        return self.returncode

    def _finish(self, line: str) -> None:
        self.returncode = int(json.loads(line)["returncode"])
        self._connection.close()

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            line = self._status_line(timeout)
            if line is None:
                raise subprocess.TimeoutExpired(self.args, timeout)
            self._finish(line)
        return self.returncode

    def communicate(self, input: Any = None, timeout: float | None = None) -> tuple[Any, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        streams = [s for s in (self.stdout, self.stderr) if s is not None]
        chunks: dict[Any, list] = {s: [] for s in streams}
        with selectors.DefaultSelector() as selector:
            for stream in streams:
                selector.register(stream.fileno(), selectors.EVENT_READ, stream)
            while selector.get_map():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(self.args, timeout)
                for key, _ in selector.select(left):
                    data = os.read(key.fd, 1 << 16)
                    if data:
                        chunks[key.data].append(data)
                    else:
                        selector.unregister(key.fd)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        self.wait(left)
        results = []
        for stream in (self.stdout, self.stderr):
            if stream is None:
                results.append(None)
                continue
            data = b"".join(chunks[stream])
            results.append(data.decode(errors="replace") if isinstance(stream, io.TextIOWrapper) else data)
            stream.close()
        return results[0], results[1]

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def __enter__(self) -> WarmProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        for stream in (self.stdout, self.stderr):
            if stream is not None:
                stream.close()
        self.wait()


def _extra_paths(pythonpath: str | None) -> set[str]:
    """The folders of a PYTHONPATH other than the checkout (whose package the environment installs)."""
    return {os.path.realpath(p) for p in (pythonpath or "").split(os.pathsep) if p} - {str(ROOT)}


def _warm_argv(command: Any, env: dict[str, str] | None) -> list[str] | None:
    """The script or module and its arguments, when the warm interpreter can run ``command``; else None."""
    if os.environ.get("LFICAM_TEST_FRESH_PYTHON") == "1" or isinstance(command, str):
        return None
    command = [str(part) for part in command]
    if len(command) < 2 or os.path.realpath(command[0]) != os.path.realpath(sys.executable):
        return None
    argv = command[1:]
    if argv[0] == "-u":
        argv = argv[1:]
    if not argv or (argv[0].startswith("-") and argv[0] != "-m") or (argv[0] == "-m" and len(argv) < 2):
        return None
    if env is not None and _extra_paths(env.get("PYTHONPATH")) != _extra_paths(_get_server().env_pythonpath):
        return None  # another set of packages than the warm interpreter imported (the install test's)
    return argv


def popen(command: Any, **options: Any) -> Any:
    """:class:`subprocess.Popen`, started by the warm interpreter where it can (see the module's docstring)."""
    argv = _warm_argv(command, options.get("env"))
    supported = {"cwd", "env", "stdin", "stdout", "stderr", "text", "universal_newlines", "start_new_session"}
    if argv is None or set(options) - supported:
        return subprocess.Popen(command, **options)
    request = {
        "argv": argv,
        "cwd": str(options.get("cwd") or os.getcwd()),
        "env": dict(options.get("env") or os.environ),
    }
    text = bool(options.get("text") or options.get("universal_newlines"))
    return WarmProcess(request, options.get("stdin"), options.get("stdout"), options.get("stderr"), text)


def run(
    command: Any,
    *,
    capture_output: bool = False,
    timeout: float | None = None,
    check: bool = False,
    **options,
):
    """:func:`subprocess.run`, started by the warm interpreter where it can (see the module's docstring)."""
    if capture_output:
        options["stdout"] = options["stderr"] = subprocess.PIPE
    with popen(command, **options) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise
    completed = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    if check:
        completed.check_returncode()
    return completed


if __name__ == "__main__":
    serve(sys.argv[1])
