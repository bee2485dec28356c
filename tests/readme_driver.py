"""Run README commands in one long-lived Python process, each as ``python`` itself would run it.

Starting Python with torch, Lightning and Hydra costs seconds, paid once here instead of once per command:
tests/test_readme.py starts this process and sends it one JSON request per line on stdin::

    {"script": "train.py", "args": [...], "log": "<file>", "env": {...}}      # python train.py ARGS
    {"module": "lficam.explain", "args": [...], "log": "<file>", "env": {...}}  # python -m lficam.explain ARGS

For each, it runs the same entry point with the same ``sys.argv`` as ``python`` does (``runpy``: the script as
``__main__`` from its file, or the module as ``__main__``), with stdout and stderr (file descriptors 1 and 2, so
that native code and child processes are caught too) going to ``log``, and answers one JSON line
``{"rc": <exit code>, "seconds": <wall time>}``. The exit code follows Python's rules: ``SystemExit``'s code,
1 and a traceback for an uncaught exception. What one command changes in the process and could leak into the
next (Hydra's global state, the environment, the working folder, ``sys.argv``/``sys.path``, signal handlers,
torch's thread count) is put back between commands.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import runpy
import signal
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def exit_code(done: SystemExit) -> int:
    """The exit status ``python`` gives a ``SystemExit``: None → 0, an int → itself, anything else is printed
    and gives 1."""
    if done.code is None:
        return 0
    if isinstance(done.code, int):
        return done.code
    print(done.code, file=sys.stderr)
    return 1


def reset_hydra() -> None:
    """Forget the previous command's Hydra app, as a fresh process would have none."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.singleton import Singleton

    GlobalHydra.instance().clear()
    Singleton._instances.pop(HydraConfig, None)


@contextlib.contextmanager
def output_to(log: str):
    """File descriptors 1 and 2 (and sys.stdout/sys.stderr) into ``log`` for the duration."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "ab", buffering=0) as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


@contextlib.contextmanager
def restored_process_state():
    """Put back what a command may change in the process: environment, folder, argv, path, signals, threads."""
    import torch

    environ, cwd = dict(os.environ), os.getcwd()
    argv, path = list(sys.argv), list(sys.path)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(environ)
        os.chdir(cwd)
        sys.argv[:], sys.path[:] = argv, path
        for number, handler in handlers.items():
            signal.signal(number, handler)
        torch.set_num_threads(threads)


def run_command(request: dict) -> int:
    """Run one request's script or module with its arguments; its exit code."""
    reset_hydra()
    os.environ.update(request.get("env", {}))
    os.chdir(request.get("cwd", ROOT))
    try:
        if "script" in request:
            script = str(Path(request["script"]))
            sys.argv = [script, *request["args"]]
            sys.path[0] = str(Path(script).resolve().parent)  # what `python script.py` puts first
            runpy.run_path(script, run_name="__main__")
        else:
            sys.argv = [request["module"], *request["args"]]  # run_module sets argv[0] to the file, as -m
            sys.path[0] = os.getcwd()  # what `python -m` puts first
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    except SystemExit as done:
        return exit_code(done)
    except BaseException:  # what python does with an uncaught exception
        traceback.print_exc()
        return 1
    return 0


def serve(requests, answers) -> None:
    """Answer each JSON request line with a JSON line ``{"rc", "seconds"}``."""
    for line in requests:
        if not line.strip():
            continue
        request = json.loads(line)
        start = time.perf_counter()
        with restored_process_state(), output_to(request["log"]):
            rc = run_command(request)
        gc.collect()
        answers.write(json.dumps({"rc": rc, "seconds": time.perf_counter() - start}) + "\n")
        answers.flush()


def main() -> None:
    # the answers go to the original stdout; what commands print goes to their logs
    answers = os.fdopen(os.dup(1), "w")
    sys.path[0] = str(ROOT)
    import hydra  # noqa: F401  (imported once, before the first command: the point of this process)
    import lightning.pytorch  # noqa: F401
    import torch  # noqa: F401

    serve(sys.stdin, answers)


if __name__ == "__main__":
    main()
