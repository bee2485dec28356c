"""README.md's commands, run as written (issue 17).

Every line of README.md's ```bash blocks is a command. Each one either runs here, as written, with only
tiny-setting overrides appended (small data sizes, one epoch, folders in tmp) and its placeholders (``<run>``,
``<ckpt>``, ``<sweep folder>``, ``a.jpg``, ``/data/...``) replaced by real files that fixtures make; or it is
listed in :data:`NOT_OFFLINE` with the reason it cannot run on this machine. A README command that is neither
makes :func:`test_every_readme_command_is_run_or_listed` fail, and so does a listed command that the README
no longer has, so the list cannot go stale.

The ``python ...`` commands run in one long-lived process (tests/readme_driver.py) that imports torch,
Lightning and Hydra once and then runs each command's own entry point (``train.py``, ``-m lficam.explain``, …)
with the command's ``sys.argv``, as ``python`` would; ``make`` targets run as their own processes.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

pytestmark = pytest.mark.slow

#: README commands that cannot run offline on this machine, and why.
NOT_OFFLINE = {
    "make test": "runs the whole test suite, this file included (recursive)",
    "lficam-app <run>": "serves until stopped; tests/test_app_browser.py starts it on a free port and drives it",
    "pip install -e '.[app]'": "installs from the network where the wheel is not on disk (make setup has)",
    "python train.py trainer=ddp trainer.devices=4": "needs four GPUs (trainer=ddp_cpu runs the same strategy)",
    "python train.py -m hydra/launcher=slurm trainer=ddp": "needs a SLURM cluster (sbatch) and GPUs",
    # "Past one machine": each runs against real daemons in tests/test_cluster_*.py
    "python train.py -m hydra/launcher=slurm hydra.launcher.partition=gpu trainer=ddp trainer.devices=4 seed=1,2,3": (
        "needs a SLURM cluster with a GPU partition"
    ),
    "python train.py -m hydra/launcher=slurm hydra.launcher.partition=gpu trainer=ddp trainer.devices=4 "
    "trainer.num_nodes=2": "needs a SLURM cluster with two GPU nodes",
    "python train.py -m hydra/launcher=slurm hydra.launcher.partition=cpu hydra.launcher.cpus_per_task=1 "
    "trainer=ddp_cpu": "needs a running SLURM cluster; tests/test_cluster_slurm.py runs it on the test cluster",
    "torchrun --nnodes=2 --nproc-per-node=4 --rdzv-backend=c10d --rdzv-endpoint=node1:29500 --rdzv-id=run1 train.py "
    "trainer=ddp trainer.devices=4 trainer.num_nodes=2 hydra.run.dir=/shared/run1": (
        "needs two nodes with GPUs; tests/test_cluster_torchrun.py runs two agents as two nodes on one host"
    ),
    "python scripts/slurm_cluster.py start /tmp/lficam-slurm": (
        "starts SLURM daemons as root (make slurm); tests/cluster.py starts and stops one for the cluster tests"
    ),
    "python scripts/slurm_cluster.py stop /tmp/lficam-slurm": "stops the cluster the line before starts",
    "python train.py -m hparams_search=lficam_optuna hydra.sweeper.storage=postgresql://user:password@dbhost/optuna "
    "hydra.sweeper.n_trials=10 hydra.sweeper.sampler.seed=1": (
        "needs a PostgreSQL server; tests/test_cluster_optuna.py starts one and runs three workers against it"
    ),
    "make reproduce": "the full study: 60 runs, about 2 h 20 min on 2 CPU cores",
    "make reproduce-quick": "the study pipeline at toy scale still takes minutes (tests/test_study.py covers it)",
    "python reproduce.py study=paper study.data_sets.cifar10.root=/data/cifar ...": (
        "the paper's data sets (CIFAR-10, STL-10, ...) on a GPU"
    ),
    "lficam-optimize data=fashion_clutter output=s3://my-bucket/fashion_clutter": (
        "needs an S3 store and its credentials; tests/test_streaming_s3.py writes to SeaweedFS on this machine"
    ),
    "python train.py data=streaming data.input_dir=s3://my-bucket/fashion_clutter data.num_workers=4": (
        "needs an S3 store and its credentials; tests/test_streaming_s3.py trains from SeaweedFS on this machine"
    ),
    "python bench/streamed.py": "a benchmark of minutes at 224 px that starts its own object store",
}

#: README commands that need data this machine may lack: (what must exist, why the command needs it).
NEEDS_DATA = {
    "make fashion-mnist": (FASHION_MNIST, "without the files it runs apt-get install (root, network)"),
    "python train.py data=fashion_mnist trainer.max_epochs=5": (
        FASHION_MNIST,
        "reads Fashion-MNIST from its default folder (make fashion-mnist)",
    ),
}

#: Placeholders of the README and the fixture that stands in for each.
PLACEHOLDERS = {
    "<run>": "run",
    "<ckpt>": "checkpoint",
    "<sweep folder>": "sweep_folder",
    "/tmp/quick": "quick_folder",
    "/data/cifar": "cifar10_folder",
    "/data/cats_vs_dogs": "image_folder",
    "/data/pets": "image_folder",
    "/my/folder": "fashion_files",
    "/path/to/file.safetensors": "resnet50_safetensors",
    "/data/chunks/shapes": "chunks_folder",
}
IMAGE_FILE = re.compile(r"\b[a-z]\.(?:jpg|png)\b")
# what a placeholder looks like, to catch one the table above does not know
UNKNOWN_PLACEHOLDER = re.compile(r"<[^>]*>|(?<![\w.])/(?:data|path|my)/\S*")

#: Tiny sizes per data set (its `data=` option), for the keys that data set has.
#: (48 shapes hold every class, which FAM's class prototypes need; the image folder has 4 training images.)
TINY_DATA = {
    "shapes": {"train_size": 48, "val_size": 16, "test_size": 16, "image_size": 16},
    "fashion_mnist": {"train_size": 48, "val_size": 16, "test_size": 16, "image_size": 16},
    "fashion_clutter": {"train_size": 48, "val_size": 16, "test_size": 16},
    "cifar10": {"val_size": 8},
    "cifar100": {"val_size": 8},
    "image_folder": {"image_size": 32, "num_workers": 0, "batch_size": 2, "eval_batch_size": 4},
}
TINY_LOADER = {"batch_size": 8, "eval_batch_size": 16}
TINY_TRAIN = {
    "trainer.max_epochs": 1,
    # one training step an epoch: the 20-epoch command stays a 20-step run
    "++trainer.limit_train_batches": 1,
    # the final overlay picture draws 3 panels per image with matplotlib: 16 images cost seconds
    "callbacks.attention_overlays.num_images": 2,
}
TINY_EVAL = {
    "eval.num_images": 8,
    "eval.curve_steps": 4,
    "eval.road_percentages": "[0.5]",
    "eval.retrieval_pictures": 2,
    "stability.num_images": 16,
}
#: Backbones whose last stage is so wide that the paper's FIN (4·9·C² weights) would dominate a CPU test: on
#: ResNet-50's C = 2048 it has 151 M parameters, 1.4 GB checkpoints and takes over a minute a run on 2 cores.
#: Their commands get the light FIN appended (it is not a value any of these commands sets).
WIDE_BACKBONES = {"resnet50", "resnet101", "resnet152", "timm"}
BENCH_TINY = ["--batch", "8", "--size", "16", "--rounds", "1"]
COMMAND_TIMEOUT_S = 300


# ----------------------------------------------------------------------------------------- the README


def readme_commands(text: str | None = None) -> list[str]:
    """Each command line of README.md's ```bash blocks, without its comment, whitespace collapsed, once."""
    text = README.read_text() if text is None else text
    commands: list[str] = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.splitlines():
            command = " ".join(re.sub(r"(^|\s)#.*$", "", line).split())
            if command and command not in commands:
                commands.append(command)
    return commands


COMMANDS = readme_commands()


def test_readme_parser_reads_commands_and_drops_comments() -> None:
    text = "x\n```bash\nmake train   # a comment\n# only a comment\n\npython  a.py  k=[1,2]\n```\n```python\nno\n```\n"
    assert readme_commands(text) == ["make train", "python a.py k=[1,2]"]
    assert "python train.py -m seed=1,2,3 attention=lficam,abn" in COMMANDS
    assert len(COMMANDS) >= 40


# ----------------------------------------------------------------------------------------- the plans


class NotRunnable(Exception):
    """A README command this file does not know how to run (it must then be listed in NOT_OFFLINE)."""


@dataclass
class Plan:
    """How one README command runs here: what it runs and its arguments, the command's own (the first
    ``own``) and then the tiny ones appended."""

    command: str
    program: str  # "script", "module" or "make"
    target: str  # train.py, lficam.explain, the make target
    args: list[str]
    own: int = 0

    @property
    def own_args(self) -> list[str]:
        return self.args[: self.own]

    @property
    def multirun(self) -> bool:
        return self.program == "script" and ("-m" in self.own_args or "--multirun" in self.own_args)

    def has(self, key: str) -> bool:
        """Whether the command's own arguments set ``key`` (``+key=``/``++key=`` included)."""
        return self.value(key) is not None

    def value(self, key: str, appended: bool = False) -> str | None:
        """The value the command gives ``key`` (with ``appended``: the value it runs with)."""
        found = None
        for arg in self.args if appended else self.own_args:
            name, _, value = arg.lstrip("+~").partition("=")
            if name == key:
                found = value
        return found


def substitute(command: str, resolve) -> str:
    """The command with each placeholder replaced by the path ``resolve(fixture name)`` gives."""

    def fixture(name: str) -> str:
        return str(resolve(name))

    for placeholder, name in PLACEHOLDERS.items():
        if placeholder in command:
            command = command.replace(placeholder, fixture(name))
    command = IMAGE_FILE.sub(lambda m: fixture(f"image:{m.group(0)}"), command)
    unknown = UNKNOWN_PLACEHOLDER.findall(command)
    if unknown:
        raise NotRunnable(f"no fixture stands in for {unknown}: add one to PLACEHOLDERS")
    return command


def plan(command: str, resolve) -> Plan:
    """How ``command`` runs here, with placeholders replaced by ``resolve``; NotRunnable if it cannot."""
    text = substitute(command, resolve)
    # "..." stands for the reader's other settings: the command runs without them
    words = [w for w in shlex.split(text) if w != "..."]
    if words[:2] == ["python", "-m"] and len(words) > 2 and words[2].startswith("lficam."):
        result = Plan(command, "module", words[2], words[3:])
    elif words[:1] == ["python"] and len(words) > 1 and (ROOT / words[1]).is_file():
        result = Plan(command, "script", words[1], words[2:])
    elif words[:1] == ["make"] and len(words) == 2 and words[1] in ("train", "fashion-mnist"):
        result = Plan(command, "make", words[1], [])
    else:
        raise NotRunnable(
            "not a python train.py/eval.py/bench script, python -m lficam.*, or a known make target"
        )
    result.own = len(result.args)
    result.args += tiny_args(result, resolve)
    return result


def experiment_config(plan: Plan) -> dict:
    """The command's ``experiment=`` file as written (empty without one)."""
    name = plan.value("experiment")
    return yaml.safe_load((ROOT / "conf" / "experiment" / f"{name}.yaml").read_text()) if name else {}


def experiment_choice(plan: Plan, group: str, default: str) -> str:
    """The option of config group ``group`` that the command picks, directly or through its experiment."""
    if plan.value(group):
        return plan.value(group)
    for entry in experiment_config(plan).get("defaults", []):
        if isinstance(entry, dict) and f"override /{group}" in entry:
            return entry[f"override /{group}"]
    return default


def wants_pretrained(plan: Plan) -> bool:
    """Whether the command's model starts from published weights (given by it or by its experiment)."""
    options = (experiment_config(plan).get("model") or {}).get("options") or {}
    weights = plan.value("model.options.weights") or options.get("weights")
    pretrained = plan.value("model.options.pretrained") or str(options.get("pretrained", "false")).lower()
    return pretrained == "true" or weights == "imagenet" or str(weights).startswith("IMAGENET1K")


def _missing(plan: Plan, overrides: dict[str, object]) -> list[str]:
    """``key=value`` for each tiny override the command does not set itself (its own values are kept)."""
    return [f"{k}={v}" for k, v in overrides.items() if not plan.has(k.lstrip("+~"))]


def tiny_args(plan: Plan, resolve) -> list[str]:
    """The overrides appended to a command: tiny sizes, and every folder it writes inside tmp."""
    if "--help" in plan.args:
        return []
    if plan.program == "make" or plan.target.startswith("bench/"):
        return BENCH_TINY if plan.target.startswith("bench/") else []
    folders = {"paths.log_dir": resolve("log_dir"), "paths.data_dir": resolve("data_dir")}
    if plan.target == "train.py":
        return train_tiny_args(plan, resolve) + _missing(plan, folders)
    if plan.target == "eval.py":
        return _missing(plan, {**TINY_EVAL, **folders})
    if plan.target == "lficam.explain":
        return _missing(plan, {"output_dir": resolve("explain_folder")})
    if plan.target == "lficam.cli.optimize":  # written to this command's own folder, not over the fixture
        sizes = {f"data.{k}": v for k, v in TINY_DATA.get(plan.value("data") or "shapes", {}).items()}
        return [*_missing(plan, {**sizes, "data.cache_dir": "null"}), f"output={resolve('chunks_output')}"]
    return []


def train_tiny_args(plan: Plan, resolve) -> list[str]:
    data = experiment_choice(plan, "data", "shapes")
    model = experiment_choice(plan, "model", "cifar_resnet20")
    tiny = {f"data.{k}": v for k, v in {**TINY_LOADER, **TINY_DATA.get(data, {})}.items()}
    tiny.update(TINY_TRAIN)
    if plan.has("debug"):  # the debug configs drop the checkpoints and the overlays
        del tiny["callbacks.attention_overlays.num_images"]
    if plan.has("ckpt_path"):  # a resumed one-epoch run trains one epoch more
        tiny["trainer.max_epochs"] = 2
    if plan.has("hparams_search"):
        tiny["hydra.sweeper.n_trials"] = 1
    if model in WIDE_BACKBONES and experiment_choice(plan, "attention", "lficam") == "lficam":
        tiny["attention.options.fin"] = "lite"
    if data == "image_folder" and not plan.has("data.root"):
        resolve("image_folder")  # the default root, ${paths.data_dir}/image_folder, holds it
    if wants_pretrained(plan):  # its file in the offline cache, where a first download puts it
        resolve(f"pretrained:{plan.value('model.backbone') or model}")
    return _missing(plan, tiny)


def _dry_resolve(name: str) -> str:
    return f"/tmp/fixture-{name.replace(':', '-')}"


# ----------------------------------------------------------------------------------------- the guard


def test_every_readme_command_is_run_or_listed() -> None:
    """A README command that is neither run here nor listed with its reason fails; so does a stale listing."""
    problems = []
    for command in COMMANDS:
        if command in NOT_OFFLINE:
            continue
        try:
            plan(command, _dry_resolve)
        except NotRunnable as why:
            problems.append(f"{command!r}: {why}; run it here or list it in NOT_OFFLINE with the reason")
    for listed in [*NOT_OFFLINE, *NEEDS_DATA]:
        if listed not in COMMANDS:
            problems.append(f"{listed!r} is listed in test_readme.py but README.md no longer has it")
    assert problems == []


def test_the_guard_catches_an_unknown_command_and_placeholder() -> None:
    with pytest.raises(NotRunnable, match="not a python"):
        plan("docker run --gpus all lficam", _dry_resolve)
    with pytest.raises(NotRunnable, match=r"no fixture stands in for \['<model>'\]"):
        plan("python eval.py ckpt_path=<model>", _dry_resolve)


def test_tiny_overrides_keep_the_commands_own_values() -> None:
    command = "python train.py data.image_size=64 data.clutter=6 trainer.max_epochs=20"
    args = plan(command, _dry_resolve).args
    assert args[:3] == ["data.image_size=64", "data.clutter=6", "trainer.max_epochs=20"]
    keys = [a.split("=")[0] for a in args]
    assert keys.count("data.image_size") == 1 and keys.count("trainer.max_epochs") == 1
    assert "data.train_size=48" in args and "paths.log_dir=/tmp/fixture-log_dir" in args
    sweep = plan("python train.py -m seed=1,2,3 attention=lficam,abn", _dry_resolve)
    assert sweep.multirun and sweep.args[:3] == ["-m", "seed=1,2,3", "attention=lficam,abn"]
    assert expected_jobs(sweep) == 6


# ----------------------------------------------------------------------------------------- the driver


class Driver:
    """tests/readme_driver.py as a child process: one request line in, one answer line out."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "readme_driver.py")],
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def run(self, request: dict, timeout: float) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        answer: list[str] = []
        reader = threading.Thread(target=lambda: answer.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not answer or not answer[0]:
            self.stop()  # hung or died: the next command gets a fresh process
            return {"rc": None, "seconds": timeout}
        return json.loads(answer[0])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


@dataclass
class Outcome:
    plan: Plan
    rc: int | None
    output: str
    log_dir: Path
    seconds: float


def base_env(session: Path) -> dict[str, str]:
    """The environment every command runs in: offline, one thread each (the suite shares the cores), and
    torch's and Hugging Face's caches in tmp (where the pretrained-weight fixtures put their files)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "WANDB_SERVICE")}
    env.update(
        WANDB_MODE="offline",
        OMP_NUM_THREADS="1",
        TORCH_HOME=str(session / "torch"),
        HF_HOME=str(session / "hf"),
        HF_HUB_OFFLINE="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    )
    return env


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("readme")


@pytest.fixture(scope="session")
def driver(session_dir: Path):
    proc = Driver(base_env(session_dir))
    yield proc
    proc.stop()


class Runner:
    """Runs README commands, each once per session (a fixture may reuse a command's outcome), each in a
    folder of its own under the session's tmp folder."""

    def __init__(self, driver: Driver, session: Path) -> None:
        self.driver, self.session = driver, session
        self.fixtures = Fixtures(self, session)
        self.outcomes: dict[str, Outcome] = {}
        self.count = itertools.count()

    def __call__(self, command: str) -> Outcome:
        if command not in self.outcomes:
            self.outcomes[command] = self._run(command)
        return self.outcomes[command]

    def _run(self, command: str) -> Outcome:
        folder = self.session / f"command{next(self.count):02d}"
        folder.mkdir()
        resolve = functools.partial(self.fixtures.get, folder=folder)
        runnable = plan(command, resolve)
        log = folder / "output.txt"
        log.touch()
        if runnable.program == "make":
            rc, seconds = run_make(runnable, log, resolve, base_env(self.session))
        else:
            request = {runnable.program: runnable.target, "args": runnable.args, "log": str(log)}
            answer = self.driver.run(request, COMMAND_TIMEOUT_S)
            rc, seconds = answer["rc"], answer["seconds"]
        return Outcome(runnable, rc, log.read_text(errors="replace"), resolve("log_dir"), seconds)


def run_make(runnable: Plan, log: Path, resolve, env: dict[str, str]) -> tuple[int | None, float]:
    """``make <target>`` as its own process; ``make train`` gets python train.py's tiny overrides as ARGS."""
    import time

    args = []
    if runnable.target == "train":
        args = ["ARGS=" + " ".join(plan("python train.py", resolve).args)]
    start = time.perf_counter()
    with log.open("w") as out:
        try:
            rc = subprocess.run(
                ["make", runnable.target, *args],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=COMMAND_TIMEOUT_S,
            ).returncode
        except subprocess.TimeoutExpired:
            rc = None
    return rc, time.perf_counter() - start


# ----------------------------------------------------------------------------------------- the fixtures


class Fixtures:
    """The real files that stand in for the README's placeholders, made when a command first needs them."""

    def __init__(self, runner: Runner, session: Path) -> None:
        self.runner, self.session = runner, session
        self.made: dict[str, Path] = {}

    def get(self, name: str, folder: Path) -> Path:
        """The path for fixture ``name``; ``folder`` is the command's own folder (for what it may change)."""
        per_command = {
            "log_dir": folder / "logs",
            "explain_folder": folder / "explain",
            "quick_folder": folder / "quick",
            "chunks_output": folder / "chunks",
        }
        if name in per_command:
            return per_command[name]
        if name in ("run", "checkpoint"):  # a copy per command: a resume writes into it
            run = folder / "run"
            if not run.exists():
                shutil.copytree(self.shared("trained_run"), run)
            return run if name == "run" else run / "checkpoints" / "last.ckpt"
        return self.shared(name)

    def shared(self, name: str) -> Path:
        if name not in self.made:
            self.made[name] = self._make(name)
        return self.made[name]

    def _make(self, name: str) -> Path:
        data = self.session / "data"
        if name == "data_dir":
            return data
        if name == "trained_run":
            return run_folder_of(self.runner("python train.py"))
        if name == "sweep_folder":
            return sweep_folders_of(self.runner(SWEEP))[0]
        if name.startswith("image:"):
            return write_image(self.session / "images" / name.removeprefix("image:"))
        if name.startswith("pretrained:"):
            return write_pretrained_cache(name.removeprefix("pretrained:"), self.session)
        makers = {
            "cifar10_folder": lambda: write_cifar10(self.session / "cifar10"),
            "image_folder": lambda: write_image_folder(data / "image_folder"),
            "fashion_files": lambda: write_fashion(self.session / "fashion"),
            "resnet50_safetensors": lambda: write_resnet50_safetensors(self.session / "resnet50.safetensors"),
            "chunks_folder": lambda: write_chunks(self.session / "chunks"),
        }
        return makers[name]()


#: The README's grid sweep, whose folder stands in for <sweep folder> (two attention kinds, three runs each).
SWEEP = "python train.py -m seed=1,2,3 attention=lficam,abn"


def write_chunks(folder: Path) -> Path:
    """Tiny shapes as a streamed data set (what the README's lficam-optimize command writes)."""
    from lficam.data import ShapesDataModule
    from lficam.data.stream_write import write_streamed

    write_streamed(ShapesDataModule(**TINY_DATA["shapes"], cache_dir=None), str(folder))
    return folder


def write_image(path: Path, seed: int = 0) -> Path:
    """A 24×24 RGB picture of noise in the format its suffix names."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed + len(path.name) + ord(path.name[0])).integers(0, 256, (24, 24, 3))
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def write_image_folder(root: Path) -> Path:
    """root/{train,val}/{cat,dog}/<i>.png, two 40×40 images per class and split (no test/: test = val)."""
    for split in ("train", "val"):
        for label, name in enumerate(("cat", "dog")):
            for i in range(2):
                write_image(root / split / name / f"{i}.png", seed=10 * label + i)
    return root


def write_cifar10(root: Path, per_batch: int = 8, test: int = 8) -> Path:
    """CIFAR-10's binary version (cifar-10-batches-bin/: 1 label byte + 3072 pixel bytes a record)."""
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for name in names:
        count = test if name.startswith("test") else per_batch
        labels = (np.arange(count) % 10).astype(np.uint8)[:, None]
        pixels = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        (folder / name).write_bytes(np.concatenate([labels, pixels], axis=1).tobytes())
    return root


def write_idx(path: Path, array: np.ndarray) -> None:
    """An uint8 IDX file: magic 0x08 with the number of dimensions, big-endian int32 sizes, the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_fashion(root: Path, train: int = 80, test: int = 16) -> Path:
    """The four Fashion-MNIST IDX files, with grey rectangles on black as garments."""
    root.mkdir(parents=True)
    for prefix, count in (("train", train), ("t10k", test)):
        images = np.zeros((count, 28, 28), dtype=np.uint8)
        for i in range(count):
            images[i, 4 + i % 5 : 22, 6 : 20 + i % 4] = 60 + 15 * (i % 10)
        write_idx(root / f"{prefix}-images-idx3-ubyte", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", np.arange(count) % 10)
    return root


def write_resnet50_safetensors(path: Path) -> Path:
    """torchvision's ResNet-50 state dict (random weights, torchvision's key names) as a safetensors file."""
    import torchvision
    from safetensors.torch import save_file

    state = torchvision.models.resnet50(weights=None).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def write_pretrained_cache(backbone: str, session: Path) -> Path:
    """Random weights where the offline caches keep ``backbone``'s pretrained file, as after a download:
    torch hub's cache for torchvision ResNets, the Hugging Face cache for timm models (base_env points
    TORCH_HOME and HF_HOME at these folders)."""
    import torch

    if backbone.startswith("timm/"):
        import timm
        from safetensors.torch import save_file

        name = backbone.removeprefix("timm/")
        repo = timm.models.get_pretrained_cfg(name).hf_hub_id
        folder = session / "hf" / "hub" / ("models--" + repo.replace("/", "--"))
        revision = "0" * 40
        (folder / "refs").mkdir(parents=True)
        (folder / "refs" / "main").write_text(revision)
        (folder / "snapshots" / revision).mkdir(parents=True)
        state = timm.create_model(name).state_dict()
        save_file(
            {k: v.contiguous() for k, v in state.items()},
            str(folder / "snapshots" / revision / "model.safetensors"),
        )
        return folder
    import torchvision

    weights = torchvision.models.get_model_weights(backbone).DEFAULT
    path = session / "torch" / "hub" / "checkpoints" / Path(weights.url).name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision.models.get_model(backbone, weights=None).state_dict(), path)
    return path


# ----------------------------------------------------------------------------------------- the checks


def run_folder_of(outcome: Outcome) -> Path:
    """The run folder a training command printed last (``Run folder: <path>``), after checking that it ran."""
    assert_ran(outcome)
    folders = re.findall(r"^Run folder: (.+)$", outcome.output, flags=re.M)
    assert folders, f"{outcome.plan.command!r} printed no run folder:\n{outcome.output[-3000:]}"
    return Path(folders[-1].strip())


def sweep_folders_of(outcome: Outcome) -> list[Path]:
    assert_ran(outcome)
    return sorted(outcome.log_dir.glob("*/multiruns/*"))


def assert_ran(outcome: Outcome) -> None:
    """Exit code 0, or the command, its exit code and the end of its output."""
    if outcome.rc != 0:
        status = "ran past its time limit" if outcome.rc is None else f"exited with {outcome.rc}"
        pytest.fail(
            f"{outcome.plan.command!r} {status}; it ran as {outcome.plan.program} {outcome.plan.target} "
            f"{' '.join(outcome.plan.args)}\n--- its output (end) ---\n{outcome.output[-6000:]}"
        )


def expected_jobs(runnable: Plan) -> int:
    """How many jobs a multirun starts: the sweeper's trials, or the product of the comma lists' lengths."""
    trials = next((a.split("=")[1] for a in runnable.args if a.startswith("hydra.sweeper.n_trials=")), None)
    if trials is not None:
        return int(trials)
    counts = [
        len(a.split("=", 1)[1].split(","))
        for a in runnable.own_args
        if "=" in a and "," in a.split("=", 1)[1] and not a.split("=", 1)[1].startswith("[")
    ]
    return int(np.prod(counts)) if counts else 1


def check_train(outcome: Outcome) -> None:
    runnable = outcome.plan
    if "--help" in runnable.args:
        assert (
            "== Configuration groups ==" in outcome.output
            and "attention: abn, lficam, none" in outcome.output
        )
        return
    if runnable.multirun:
        (sweep,) = sweep_folders_of(outcome)
        summaries = sorted(sweep.glob("*/summary.json"))
        assert len(summaries) == expected_jobs(runnable), sorted(p.name for p in sweep.iterdir())
        return
    summary = json.loads((run_folder_of(outcome) / "summary.json").read_text())
    if runnable.value("debug") != "fdr":  # fast_dev_run tests nothing it saved
        assert 0.0 <= summary["metrics"]["test/acc"] <= 1.0, summary


def check_eval(outcome: Outcome) -> None:
    (folder,) = outcome.log_dir.glob("eval/runs/*")
    if outcome.plan.has("stability.runs"):
        report = json.loads((folder / "stability.json").read_text())
        assert report, folder
    elif outcome.plan.value("eval.task") == "retrieval":
        assert (folder / "retrieval.json").is_file(), sorted(p.name for p in folder.iterdir())
    else:
        report = json.loads((folder / "metrics.json").read_text())
        assert 0.0 <= report["test"]["acc"] <= 1.0, report["test"]
        assert set(report["maps"]) >= {"own"}, report["maps"].keys()


def check_outputs(outcome: Outcome) -> None:
    """One concrete output of each kind of command, after its exit code."""
    assert_ran(outcome)
    runnable = outcome.plan
    if runnable.program == "make":
        if runnable.target == "train":
            assert (run_folder_of(outcome) / "summary.json").is_file()
        else:
            assert "Fashion-MNIST is installed" in outcome.output
    elif runnable.target == "train.py":
        check_train(outcome)
    elif runnable.target == "eval.py":
        check_eval(outcome)
    elif runnable.target == "lficam.explain":
        pictures = sorted(
            Path(runnable.value("output_dir") or runnable.args[-1].split("=", 1)[1]).glob("*.png")
        )
        assert pictures, outcome.output[-2000:]
    elif runnable.target == "lficam.cli.optimize":
        written = Path(runnable.value("output", appended=True))
        assert (written / "lficam.json").is_file(), outcome.output[-2000:]
    elif runnable.target == "lficam.export":
        checkpoint = Path(runnable.value("ckpt_path"))
        assert checkpoint.with_suffix("." + runnable.value("format")).is_file()
    elif runnable.target.startswith("bench/"):
        assert "bf16 autocast" in outcome.output


# ----------------------------------------------------------------------------------------- the tests


@pytest.fixture(scope="session")
def run_command(driver: Driver, session_dir: Path) -> Runner:
    return Runner(driver, session_dir)


def _optuna_last(commands: list[str]) -> list[str]:
    """The Optuna search last, so that it runs after the other commands (it was broken when this was written)."""
    return sorted(commands, key=lambda c: "hparams_search=" in c)


@pytest.mark.parametrize("command", _optuna_last(COMMANDS))
def test_readme_command_runs_as_written(command: str, run_command: Runner) -> None:
    if command in NOT_OFFLINE:
        pytest.skip(f"not offline here: {NOT_OFFLINE[command]}")
    if command in NEEDS_DATA and not NEEDS_DATA[command][0].exists():
        needed, why = NEEDS_DATA[command]
        pytest.skip(f"{needed} does not exist on this machine: the command {why}")
    if (
        command.startswith("make train")
        and subprocess.run(["make", "-q", ".venv/.installed"], cwd=ROOT).returncode
    ):
        pytest.skip(
            "make train would reinstall .venv first (its stamp is older than pyproject.toml/Makefile)"
        )
    check_outputs(run_command(command))
