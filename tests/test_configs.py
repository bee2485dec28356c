"""Every option of every config group composes, and what it describes can be instantiated."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lficam.train import build_module, model_config_of
from tests.conftest import CONF, TINY, compose_train


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


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
    cfg = compose_train([*NO_DATA_SIZES, f"data={name}", *extra], tmp_path)
    datamodule = instantiate(cfg.data)
    assert datamodule.num_classes == cfg.data.num_classes


@pytest.mark.parametrize("optimizer", options("optimizer"))
@pytest.mark.parametrize("scheduler", options("scheduler"))
def test_optimizer_and_scheduler_options(optimizer, scheduler, tmp_path):
    cfg = compose_train([*TINY, f"optimizer={optimizer}", f"scheduler={scheduler}"], tmp_path)
    module = build_module(cfg)
    opt = module.optimizer_factory(params=module.parameters())
    assert opt.param_groups[0]["lr"] == cfg.optimizer.lr
    if module.scheduler_factory is not None:
        opt.step()
        module.scheduler_factory(optimizer=opt).step()


@pytest.mark.parametrize("name", options("trainer"))
def test_trainer_options(name, tmp_path):
    cfg = compose_train(
        [f"trainer={name}", *[o for o in TINY if not o.startswith("trainer.accelerator")]], tmp_path
    )
    if cfg.trainer.get("accelerator") == "gpu" and not torch.cuda.is_available():
        pytest.skip(f"trainer={name} needs a GPU")
    trainer = instantiate(cfg.trainer, logger=False)
    assert trainer.max_epochs == 1


@pytest.mark.parametrize("group", ["logger", "callbacks"])
def test_logger_and_callback_options(group, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    base = [o for o in TINY if not o.startswith("callbacks.")]
    for name in options(group):
        cfg = compose_train([*base, f"{group}={name}"], tmp_path)
        objects = [
            instantiate(c) for c in (cfg.get(group) or {}).values() if c is not None and "_target_" in c
        ]
        assert all(o is not None for o in objects)


@pytest.mark.parametrize("group", ["debug", "experiment", "hparams_search"])
def test_global_presets_compose(group, tmp_path):
    for name in options(group):
        cfg = compose_train([*NO_DATA_SIZES, f"{group}={name}"], tmp_path)
        assert cfg.trainer is not None and cfg.data is not None


def test_paths_and_run_folder_defaults():
    text = (CONF / "hydra" / "default.yaml").read_text()
    assert "%f" in text  # microseconds: jobs started in the same second get different folders
    assert Path(CONF / "train.yaml").read_text().count("optimized_metric") == 1
