"""Mixed precision, channels-last memory and torch.compile: what of each can run on a CPU runs here.

bf16-mixed trains on a CPU (Lightning replaces 16-mixed by bf16-mixed there, so float16 autocast is checked on
the forward pass only); the rule both exercise: LFI-CAM's min-max normalisations run in float32, so A stays in
[0, 1].
"""

from __future__ import annotations

import functools
import os

import lightning.pytorch as pl
import pytest
import torch

from lficam.data import ShapesDataModule
from lficam.models import create_model
from lficam.training.module import LitClassifier


def _module(seed: int = 0, **options: object) -> LitClassifier:
    torch.manual_seed(seed)
    net = create_model("cifar_resnet20", num_classes=4, attention="lficam")
    optimizer = functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9)
    return LitClassifier(net, optimizer, num_classes=4, **options)


def _data(tmp_path) -> ShapesDataModule:
    return ShapesDataModule(
        image_size=16,
        num_classes=4,
        train_size=32,
        val_size=16,
        test_size=16,
        batch_size=8,
        eval_batch_size=8,
        cache_dir=str(tmp_path),
        augment=False,
    )


@pytest.mark.slow
def test_mixed_precision_fit_on_cpu_gives_finite_metrics_and_maps_in_unit_range(tmp_path):
    module, data = _module(), _data(tmp_path)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        precision="bf16-mixed",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=data)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for key in ("train/loss_epoch", "val/loss", "val/acc", "val/attn/pointing_game"):
        assert key in metrics
        assert torch.isfinite(torch.tensor(metrics[key])), key
    assert 0.0 <= metrics["val/acc"] <= 1.0
    assert trainer.global_step == 4  # 32 images in batches of 8
    assert all(torch.isfinite(p).all() for p in module.parameters())

    # the forward passes of bf16-mixed and of 16-mixed (float16 autocast, what it does on a GPU; on a CPU
    # Lightning swaps 16-mixed for bf16-mixed, so float16 is checked here on the trained model directly)
    images = next(iter(data.val_dataloader()))["image"]
    module.eval()
    for half in (torch.bfloat16, torch.float16):
        with torch.no_grad(), torch.autocast("cpu", dtype=half):
            output = module(images)
        assert output.logits.dtype == half  # autocast was really on
        assert output.attention.dtype == torch.float32  # the normalisation ran in float32
        assert output.attention.min() >= 0.0
        assert output.attention.max() <= 1.0
        # per image, A spans [0, 1] exactly (min-max), unless the map is constant
        spans = output.attention.flatten(1)
        assert torch.allclose(spans.amax(1), torch.ones(len(images)))
        assert torch.allclose(spans.amin(1), torch.zeros(len(images)))


def test_channels_last_gives_the_outputs_of_the_default_layout(tmp_path):
    eager, last = _module(seed=3), _module(seed=3, channels_last=True)
    conv = next(m for m in last.net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()

    data = _data(tmp_path)
    data.setup("validate")
    images = next(iter(data.val_dataloader()))["image"]
    assert images.is_contiguous()
    seen = {}
    for name, module in (("eager", eager), ("last", last)):
        module.net.register_forward_pre_hook(lambda _, args, name=name: seen.setdefault(name, args[0]))

    eager.eval()
    last.eval()
    with torch.no_grad():
        a = eager(images)
        b = last(images)
    assert seen["last"].is_contiguous(memory_format=torch.channels_last)
    assert seen["eager"].is_contiguous()
    assert torch.allclose(a.logits, b.logits, atol=1e-5, rtol=1e-4)
    assert torch.allclose(a.attention, b.attention, atol=1e-5)


@pytest.fixture
def aot_eager_compile(monkeypatch):
    """torch.compile with the aot_eager backend: Dynamo's graph capture and AOT autograd as in production, without
    inductor's C++ code generation, which takes about two minutes for this model on a 2-core CPU."""
    original = torch.compile
    monkeypatch.setattr(torch, "compile", functools.partial(original, backend="aot_eager"))


@pytest.mark.slow
def test_compile_option_matches_eager_forward_and_gradients(aot_eager_compile):
    eager, compiled = _module(seed=5), _module(seed=5, compile=True)
    keys = list(compiled.state_dict())
    compiled.setup("fit")
    assert compiled.net._compiled_call_impl is not None  # really compiled
    assert list(compiled.state_dict()) == keys  # checkpoints keep the eager keys (no _orig_mod. prefix)

    torch.manual_seed(0)
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    for module in (eager, compiled):
        module.train()
        module.net.loss(module(images), labels).backward()
    a, b = eager(images), compiled(images)
    assert torch.allclose(a.logits, b.logits, atol=1e-5)
    assert torch.allclose(a.attention, b.attention, atol=1e-5)
    for (name, p), q in zip(eager.net.named_parameters(), compiled.net.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=1e-4), name


@pytest.mark.skipif(
    os.environ.get("LFICAM_TEST_INDUCTOR") != "1",
    reason="inductor compiles C++ for ~2 minutes on a 2-core CPU; set LFICAM_TEST_INDUCTOR=1 to run",
)
def test_inductor_compile_matches_eager():
    net = _module(seed=7).net.eval()
    images = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        a = net(images)
        b = torch.compile(net)(images)
    assert torch.allclose(a.logits, b.logits, atol=1e-5)
    assert torch.allclose(a.attention, b.attention, atol=1e-5)
