"""The warm interpreter starts the project's scripts as real processes of their own, as a fresh one would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests import warm_python
from tests.conftest import ROOT


@pytest.mark.slow
def test_a_warm_child_gets_the_callers_argv_folder_environment_streams_and_exit_code(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(
        "import os, sys\n"
        "print(sys.argv[1:], os.getcwd(), os.environ['PROBE'], os.getpid() == os.getpgid(0))\n"
        "print('to stderr', file=sys.stderr)\n"
        "sys.exit(int(sys.argv[1]))\n"
    )
    env = {**os.environ, "PROBE": "value"}
    done = warm_python.run(
        [sys.executable, str(script), "3", "x"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3
    assert done.stdout.strip() == f"['3', 'x'] {tmp_path} value True"
    assert done.stderr.strip() == "to stderr"
    assert isinstance(warm_python.popen([sys.executable, str(script), "0"], env=env), warm_python.WarmProcess)
    # a user error of the real command line: one sentence, exit 2, from a child of the warm interpreter
    bad = warm_python.run(
        [sys.executable, "train.py", "trainer.max_epoch=1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert "did you mean trainer.max_epochs=1" in bad.stderr


@pytest.mark.slow
def test_a_warm_child_is_its_own_process_group_and_dies_of_sigkill(tmp_path):
    script = tmp_path / "sleeper.py"
    script.write_text("import time\nprint('up', flush=True)\ntime.sleep(60)\n")
    process = warm_python.popen([sys.executable, "-u", str(script)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "up"
    assert process.poll() is None
    assert os.getpgid(process.pid) == process.pid != os.getpid()
    started = time.monotonic()
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait(timeout=10) == -signal.SIGKILL
    assert time.monotonic() - started < 10
    process.stdout.close()


def test_other_commands_and_another_pythonpath_get_a_fresh_interpreter(tmp_path, monkeypatch):
    assert warm_python._warm_argv([sys.executable, "-c", "pass"], None) is None
    assert warm_python._warm_argv(["ls", "-l"], None) is None
    assert warm_python._warm_argv([sys.executable, "-u", "-m", "lficam.export"], None) == [
        "-m",
        "lficam.export",
    ]
    monkeypatch.setenv("LFICAM_TEST_FRESH_PYTHON", "1")
    assert warm_python._warm_argv([sys.executable, "train.py"], None) is None
    assert warm_python._extra_paths(f"{ROOT}{os.pathsep}{tmp_path}") == {str(tmp_path)}
