"""Every option of every config group composes into the values its yaml file gives, and what it describes is
instantiated with them: the class its ``_target_`` names, each key of the file read back from the object."""

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_class, instantiate
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from omegaconf import OmegaConf

from lficam.training.model_config import model_config_of
from lficam.training.task import build_module
from tests.conftest import CONF, TINY, compose_train


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def option_yaml(group: str, name: str) -> dict[str, Any]:
    """The file ``conf/<group>/<name>.yaml`` merged over the options of its group it lists in ``defaults``
    (trainer=ddp_cpu over ddp over default; logger=many over csv, tensorboard and wandb), interpolations as
    written (``${trainer.max_epochs}``)."""
    raw = OmegaConf.load(CONF / group / f"{name}.yaml")
    merged = OmegaConf.create()
    for parent in raw.pop("defaults", []):
        assert isinstance(parent, str), f"{group}/{name}: {parent} is not an option of its own group"
        merged = OmegaConf.merge(merged, option_yaml(group, parent))
    return OmegaConf.to_container(OmegaConf.merge(merged, raw), resolve=False)


def leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """{dotted key: value} of the mappings in ``node`` (plain containers); lists and scalars are values."""
    if not isinstance(node, dict) or not node:
        return {prefix: node}
    found = {}
    for key, value in node.items():
        found.update(leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    return found


def plain(node: Any) -> Any:
    """A config as plain containers, interpolations as written and enums by name (hydra.mode: MULTIRUN)."""
    return (
        OmegaConf.to_container(node, resolve=False, enum_to_str=True) if OmegaConf.is_config(node) else node
    )


def test_groups_have_options():
    for group in (
        "model",
        "attention",
        "data",
        "optimizer",
        "scheduler",
        "trainer",
        "logger",
        "callbacks",
        "debug",
    ):
        assert options(group), group


@pytest.mark.parametrize("name", options("model"))
@pytest.mark.slow
def test_model_options_build(name, tmp_path):
    cfg = compose_train([*TINY, f"model={name}"], tmp_path)
    module = build_module(cfg)
    size = 32 if name.startswith("cifar") else 64
    with torch.no_grad():
        out = module.net.eval()(torch.randn(1, 3, size, size))
    assert out.logits.shape == (1, cfg.data.num_classes)
    # the file's name, or the backbone it picks (model=timm picks timm/resnet50)
    assert model_config_of(cfg)["backbone"] == OmegaConf.load(CONF / "model" / f"{name}.yaml").backbone


@pytest.mark.parametrize("name", options("attention"))
def test_attention_options_build(name, tmp_path):
    cfg = compose_train([*TINY, f"attention={name}"], tmp_path)
    module = build_module(cfg)
    out = module.net(torch.randn(2, 3, 32, 32))
    assert out.attention.shape[0] == 2 and 0 <= float(out.attention.min()) <= float(out.attention.max()) <= 1


# Overrides that every data set understands (the shapes' sizes are not keys of the real data sets).
NO_DATA_SIZES = [o for o in TINY if not o.startswith("data.")]


@pytest.mark.parametrize("name", options("data"))
def test_data_options_instantiate(name, tmp_path):
    extra = ["data.num_classes=10"] if name == "image_folder" else []  # the one whose classes the user gives
    if name == "streaming":  # reads a data set written by lficam-optimize: tiny shapes, 10 classes
        from lficam.data import ShapesDataModule
        from lficam.data.stream_write import write_streamed

        sizes = {"image_size": 16, "train_size": 16, "val_size": 8, "test_size": 8}
        write_streamed(ShapesDataModule(**sizes), str(tmp_path / "chunks"))
        extra = [f"data.input_dir={tmp_path / 'chunks'}"]
    cfg = compose_train([*NO_DATA_SIZES, f"data={name}", *extra], tmp_path)
    datamodule = instantiate(cfg.data)
    yaml = option_yaml("data", name)
    assert type(datamodule) is get_class(yaml["_target_"])
    assert datamodule.num_classes == (10 if name in ("image_folder", "streaming") else yaml["num_classes"])
    assert (datamodule.batch_size, datamodule.eval_batch_size) == (
        yaml["batch_size"],
        yaml["eval_batch_size"],
    )
    assert (datamodule.num_workers, datamodule.persistent_workers) == (
        yaml["num_workers"],
        yaml["persistent_workers"],
    )
    # ${oc.select:seed,null}: the run's seed, train.yaml's here
    assert datamodule.shuffle_seed == OmegaConf.load(CONF / "train.yaml").seed


def _multistep_lr(base: float, scheduler: Any, step: int) -> float:
    return base * scheduler.gamma ** sum(step >= m for m in scheduler.milestones)


def _cosine_lr(base: float, scheduler: Any, step: int) -> float:
    return (
        scheduler.eta_min + (base - scheduler.eta_min) * (1 + math.cos(math.pi * step / scheduler.T_max)) / 2
    )


#: the learning rate after ``step`` epochs, by the formula of each scheduler class a scheduler option names
LR_AFTER = {
    torch.optim.lr_scheduler.MultiStepLR: _multistep_lr,
    torch.optim.lr_scheduler.CosineAnnealingLR: _cosine_lr,
}
EPOCHS = 7  # trainer.max_epochs here: the cosine's T_max (${trainer.max_epochs}) must follow it


@pytest.mark.parametrize("optimizer", options("optimizer"))
@pytest.mark.parametrize("scheduler", options("scheduler"))
def test_optimizer_and_scheduler_options(optimizer, scheduler, tmp_path):
    overrides = [o for o in TINY if not o.startswith("trainer.max_epochs")]
    cfg = compose_train(
        [*overrides, f"trainer.max_epochs={EPOCHS}", f"optimizer={optimizer}", f"scheduler={scheduler}"],
        tmp_path,
    )
    configured = build_module(cfg).configure_optimizers()
    opt, opt_yaml = configured["optimizer"], option_yaml("optimizer", optimizer)
    assert type(opt) is get_class(opt_yaml["_target_"])
    assert len(opt.param_groups) == 1 and opt_yaml["backbone_lr_scale"] == 1  # one group at scale 1
    settings = {k: v for k, v in opt_yaml.items() if k not in ("_target_", "_partial_", "backbone_lr_scale")}
    assert "lr" in settings and {k: opt.param_groups[0][k] for k in settings} == settings
    base = opt_yaml["lr"]

    sched_yaml = option_yaml("scheduler", scheduler)
    if "_target_" not in sched_yaml:  # scheduler=none: a constant learning rate, nothing stepped
        assert sched_yaml == {} and set(configured) == {"optimizer"}
        return
    assert configured["lr_scheduler"]["interval"] == "epoch"
    sched = configured["lr_scheduler"]["scheduler"]
    assert type(sched) is get_class(sched_yaml["_target_"])
    if isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR):
        assert sched_yaml["T_max"] == "${trainer.max_epochs}" and sched.T_max == EPOCHS
        assert sched.eta_min == sched_yaml["eta_min"]
        steps = EPOCHS  # to the end of the run, where lr = eta_min
    else:
        assert (
            sorted(sched.milestones) == list(sched_yaml["milestones"]) and sched.gamma == sched_yaml["gamma"]
        )
        steps = max(sched_yaml["milestones"]) + 1  # past the last milestone
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(steps):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    expected = [LR_AFTER[type(sched)](base, sched, step) for step in range(steps + 1)]
    assert lrs == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert lrs[0] == base and lrs[-1] < base  # it decays, from the optimiser's lr


def _accelerator(trainer: Any) -> str:
    return {"CPUAccelerator": "cpu", "CUDAAccelerator": "gpu"}[type(trainer.accelerator).__name__]


def _strategy(trainer: Any) -> str:
    if isinstance(trainer.strategy, DDPStrategy):
        return "ddp"
    assert isinstance(trainer.strategy, SingleDeviceStrategy)
    return "auto"


#: each key a trainer option may set, read back from the Trainer it builds
TRAINER_VALUE = {
    "default_root_dir": lambda t: t.default_root_dir,
    "min_epochs": lambda t: t.min_epochs,
    "max_epochs": lambda t: t.max_epochs,
    "accelerator": _accelerator,
    "devices": lambda t: t.num_devices,
    "num_nodes": lambda t: t.num_nodes,
    "strategy": _strategy,
    "precision": lambda t: t.precision,
    "check_val_every_n_epoch": lambda t: t.check_val_every_n_epoch,
    "log_every_n_steps": lambda t: t.log_every_n_steps,
    "deterministic": lambda t: torch.are_deterministic_algorithms_enabled(),
    "gradient_clip_val": lambda t: t.gradient_clip_val,
    "sync_batchnorm": lambda t: t._accelerator_connector._layer_sync is not None,
    "use_distributed_sampler": lambda t: t._accelerator_connector.use_distributed_sampler,
}


@pytest.mark.parametrize("name", options("trainer"))
def test_trainer_options(name, tmp_path):
    yaml = option_yaml("trainer", name)
    gpus = torch.cuda.device_count()
    if yaml["accelerator"] == "gpu" and (gpus == 0 or yaml["devices"] > gpus):
        pytest.skip(f"trainer={name} needs {yaml['devices']} GPU(s), this machine has {gpus}")
    # none of TINY's trainer overrides: every value below comes from the option's file
    cfg = compose_train([f"trainer={name}", *[o for o in TINY if not o.startswith("trainer.")]], tmp_path)
    trainer = instantiate(cfg.trainer, logger=False)
    assert type(trainer) is get_class(yaml["_target_"])
    expected = {k: v for k, v in yaml.items() if k != "_target_"}
    expected["default_root_dir"] = str(tmp_path)  # ${paths.output_dir}
    if expected["accelerator"] == "auto":
        expected["accelerator"] = "gpu" if gpus else "cpu"
    expected.setdefault("strategy", "auto")
    assert set(expected) <= set(TRAINER_VALUE), f"trainer={name} sets keys this test does not read back"
    assert {k: TRAINER_VALUE[k](trainer) for k in expected} == expected


def _attribute(obj: Any, key: str) -> Any:
    """The value ``obj`` keeps for its constructor argument ``key``: an attribute of that name or with a
    leading underscore, or, for wandb, the entry of the arguments it keeps for ``wandb.init``; TensorBoard's
    logger keeps its save_dir as ``_root_dir``."""
    kept = vars(obj)  # not getattr: a logger's properties may start its experiment
    private = {k[1:]: v for k, v in kept.items() if k.startswith("_")}
    aliases = {"save_dir": private["root_dir"]} if "root_dir" in private else {}
    for where in (kept, private, kept.get("_wandb_init", {}), aliases):
        if key in where:
            value = where[key]
            return str(value) if isinstance(value, Path) else value
    raise AssertionError(f"{type(obj).__name__} keeps no value for {key!r}")


@pytest.mark.parametrize("group", ["logger", "callbacks"])
def test_logger_and_callback_options(group, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    base = [o for o in TINY if not o.startswith("callbacks.")]
    built = set()
    for name in options(group):
        cfg = compose_train([*base, f"{group}={name}"], tmp_path)
        yaml = option_yaml(group, name)
        composed = cfg.get(group) or {}
        assert plain(composed) == yaml, f"{group}={name} composed into other entries than its file's"
        for entry, spec in yaml.items():
            obj = instantiate(composed[entry])
            assert type(obj) is get_class(spec["_target_"]), f"{group}={name}: {entry}"
            resolved = OmegaConf.to_container(composed[entry], resolve=True)
            for key, value in resolved.items():
                if not key.startswith("_"):
                    assert _attribute(obj, key) == value, f"{group}={name}: {entry}.{key}"
            built.add(f"{name}/{entry}")
    # every option was built, none=: nothing; the paths the run folder gives them (paths.output_dir: tmp_path)
    if group == "logger":
        assert {"csv/csv", "tensorboard/tensorboard", "wandb/wandb", "many/wandb"} <= built
        assert option_yaml("logger", "none") == {}
    else:
        assert {"default/model_checkpoint", "default/freeze_backbone"} <= built
        assert option_yaml("callbacks", "none") == {}
        default = compose_train(base, tmp_path).callbacks
        assert instantiate(default.model_checkpoint).dirpath == str(tmp_path / "checkpoints")
        assert instantiate(default.attention_overlays).dirpath == tmp_path / "overlays"


def _preset(group: str, name: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The values a ``# @package _global_`` preset sets ({dotted key: value}, its parents' and included
    settings' first) and the options it chooses for other groups ({group: option})."""
    raw = plain(OmegaConf.load(CONF / group / f"{name}.yaml"))
    values, choices, before = {}, {}, []
    for entry in raw.pop("defaults", []):
        if entry == "_self_":
            continue
        if isinstance(entry, str):  # a preset of its own group
            before.append(_preset(group, entry))
            continue
        [(key, option)] = entry.items()
        target = key.removeprefix("override ").removeprefix("/")
        if key.startswith("override "):  # another group's option (hydra/...: a plugin's config)
            choices[target] = option
        else:  # an included global preset, e.g. /setting: s1
            before.append(_preset(target, option))
    for parent_values, parent_choices in before:
        values.update(parent_values)
        choices.update(parent_choices)
    values.update(leaves(raw))
    return values, choices


#: the plugin configs the presets choose (they live in the plugins, not in conf/)
PLUGIN_TARGETS = {
    ("hydra/sweeper", "optuna"): "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
    ("hydra/sweeper/sampler", "tpe"): "optuna.samplers.TPESampler",
}


@pytest.mark.parametrize("group", ["debug", "experiment", "hparams_search"])
@pytest.mark.slow
def test_global_presets_compose(group):
    for name in options(group):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("train", overrides=[f"{group}={name}"], return_hydra_config=True)
        composed = leaves(plain(cfg))
        values, choices = _preset(group, name)
        assert values, f"{group}={name} sets nothing"
        for key, value in values.items():
            assert composed.get(key, "<absent>") == value, f"{group}={name}: {key}"
        for chosen, option in choices.items():
            if chosen.startswith("hydra/"):
                node = OmegaConf.select(cfg, chosen.replace("/", "."))
                assert node._target_ == PLUGIN_TARGETS[chosen, option], f"{group}={name}: {chosen}"
                continue
            # the chosen option's own values, wherever the preset does not set them
            assert cfg.hydra.runtime.choices[chosen] == option
            for key, value in leaves(option_yaml(chosen, option), chosen).items():
                if not any(key == k or key.startswith(f"{k}.") for k in values):
                    assert composed.get(key, "<absent>") == value, (
                        f"{group}={name}: {key} from {chosen}={option}"
                    )


def test_paths_and_run_folder_defaults():
    text = (CONF / "hydra" / "default.yaml").read_text()
    assert "%f" in text  # microseconds: jobs started in the same second get different folders
    assert Path(CONF / "train.yaml").read_text().count("optimized_metric") == 1
