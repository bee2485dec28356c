"""Images per second of lficam.cams against pytorch-grad-cam and against each method's floor, in one run.

    python bench/cams.py [--models resnet18,resnet50] [--size 112] [--batch 8] [--repeats 3]

Same torchvision model (random weights, seeded, eval mode), same inputs, same classes and batch sizes for
both libraries. Per method: our images/s, pytorch-grad-cam's, the speed ratio, the Pearson correlation of
the two final maps (mean over images), and our time divided by
  - a plain forward pass of the batch (``torch.no_grad``), the goal for gradient methods being ≤ 1.3;
  - the method's floor: for gradient CAMs one forward pass plus a backward pass stopped at the target layer
    (written out by hand below), for Abs-CAM two of those, for Score-CAM the K·B masked forward passes
    (B forward passes for the classes included), for CAM, Eigen-CAM and FAM a plain forward pass.
Times are CPU seconds of this process (``time.process_time``) with one torch thread, the best of
``--repeats`` interleaved runs: on a shared machine wall-clock times measure the neighbours, CPU time
measures the work. Score-CAM runs on ``--scorecam-layer`` (default layer2, 128 channels) with a batch of
``--scorecam-batch`` images, because K = 512 channels of layer4 would mean 4096 forward passes per batch.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torchvision
from torch import Tensor, nn

from lficam import cams

GRADIENT = {"gradcam", "gradcampp", "layercam", "abscam"}


def best_time(fn: Callable[[], object], repeats: int) -> Callable[[], float]:
    """A closure that runs ``fn`` once and keeps the smallest CPU time seen (called round-robin)."""
    times: list[float] = []

    def run() -> float:
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
        return min(times)

    return run


def trunk_until(model: nn.Module, layer: nn.Module, x: Tensor) -> tuple[Tensor, list[nn.Module]]:
    """The torchvision ResNet's input to ``layer`` without autograd, and the modules after it."""
    order = [
        model.conv1,
        model.bn1,
        model.relu,
        model.maxpool,
        model.layer1,
        model.layer2,
        model.layer3,
        model.layer4,
    ]
    index = next(i for i, m in enumerate(order) if m is layer)
    with torch.no_grad():
        for module in order[:index]:
            x = module(x)
    return x, order[index + 1 :]


def gradient_floor(model: nn.Module, layer: nn.Module, x: Tensor, classes: Tensor) -> Tensor:
    """One forward pass (autograd only after ``layer``) and the gradient of the class scores at ``layer``."""
    h, rest = trunk_until(model, layer, x)
    with torch.no_grad():
        a = layer(h)
    a.requires_grad_(True)
    with torch.enable_grad():
        out = a
        for module in rest:
            out = module(out)
        logits = model.fc(torch.flatten(model.avgpool(out), 1))
        return torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), a)[0]


def masked_passes_floor(model: nn.Module, x: Tensor, channels: int, batch_size: int) -> None:
    """B plain forward passes and B·K more in chunks of ``batch_size``: what Score-CAM cannot avoid."""
    with torch.no_grad():
        model(x)
        total = x.shape[0] * channels
        for start in range(0, total, batch_size):
            n = min(batch_size, total - start)
            model(x[:1].expand(n, -1, -1, -1) * 0.5)


def pearson(ours: Tensor, theirs: Tensor) -> float:
    a, b = ours.flatten(1).double(), theirs.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    r = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-30)
    return float(r.mean())


def bench_model(name: str, args: argparse.Namespace) -> list[list[str]]:
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    with torch.no_grad():
        classes = model(x).argmax(dim=1)
    sx = x[: args.scorecam_batch]
    sclasses = classes[: args.scorecam_batch]
    slayer = getattr(model, args.scorecam_layer)
    with torch.no_grad():
        k = slayer(trunk_until(model, slayer, sx)[0]).shape[1]

    theirs_cls = {
        "gradcam": pgc.GradCAM,
        "gradcampp": pgc.GradCAMPlusPlus,
        "layercam": pgc.LayerCAM,
        "eigencam": pgc.EigenCAM,
        "scorecam": pgc.ScoreCAM,
    }
    methods = ["cam", "gradcam", "gradcampp", "layercam", "abscam", "eigencam", "fam", "scorecam"]
    if name != "resnet18" and not args.scorecam_everywhere:
        methods.remove("scorecam")

    def plain_forward() -> None:
        with torch.no_grad():
            model(x)

    plain = best_time(plain_forward, args.repeats)
    grad_floor = best_time(lambda: gradient_floor(model, model.layer4, x, classes), args.repeats)
    abs_floor = best_time(
        lambda: (
            gradient_floor(model, model.layer4, x, classes),
            gradient_floor(model, model.layer4, x, classes),
        ),
        args.repeats,
    )
    score_floor = best_time(lambda: masked_passes_floor(model, sx, k, args.scorecam_chunk), 1)

    runners: dict[str, dict[str, Callable[[], float]]] = {}
    outputs: dict[str, dict[str, Tensor]] = {}
    for method in methods:
        is_score = method == "scorecam"
        inputs, targets = (sx, sclasses) if is_score else (x, classes)
        layer = slayer if is_score else model.layer4
        options = {"batch_size": args.scorecam_chunk} if is_score else {}
        ours = cams.create(method, model, layer, **options)
        outputs[method] = {}

        def run_ours(ours=ours, inputs=inputs, targets=targets, method=method) -> None:
            outputs[method]["ours"] = ours(inputs, targets)

        runners[method] = {"ours": best_time(run_ours, 1 if is_score else args.repeats)}
        if method in theirs_cls:
            target_type = ClassifierOutputSoftmaxTarget if is_score else ClassifierOutputTarget
            wrapped = [target_type(int(c)) for c in targets]

            # Built per call as their README does (`with GradCAM(...) as cam`): their hooks stay registered
            # while the object lives and would otherwise slow down every other measurement.
            def run_theirs(
                cls=theirs_cls[method], layer=layer, inputs=inputs, wrapped=wrapped, method=method
            ) -> None:
                with cls(model=model, target_layers=[layer]) as reference:
                    reference.batch_size = args.scorecam_chunk
                    outputs[method]["theirs"] = torch.from_numpy(
                        reference(input_tensor=inputs, targets=wrapped)
                    )

            runners[method]["theirs"] = best_time(run_theirs, 1 if is_score else args.repeats)

    floors = {"plain": plain, "grad": grad_floor, "abs": abs_floor, "score": score_floor}
    results: dict[str, float] = {}
    for rep in range(args.repeats):
        for key, run in floors.items():
            if key != "score" or rep == 0:
                results[key] = run()
        for method, pair in runners.items():
            for who, run in pair.items():
                if method != "scorecam" or rep == 0:
                    results[f"{method}/{who}"] = run()

    rows = []
    for method in methods:
        b = args.scorecam_batch if method == "scorecam" else args.batch
        ours_t = results[f"{method}/ours"]
        floor_key = {"scorecam": "score", "abscam": "abs"}.get(
            method, "grad" if method in GRADIENT else "plain"
        )
        floor_name = {
            "score": f"{k}·{b} masked fwd",
            "abs": "2×(fwd + bwd to layer)",
            "grad": "fwd + bwd to layer",
        }.get(floor_key, "plain fwd")
        row = [name, method, f"{b / ours_t:.1f}"]
        if f"{method}/theirs" in results:
            theirs_t = results[f"{method}/theirs"]
            row += [
                f"{b / theirs_t:.1f}",
                f"{theirs_t / ours_t:.2f}×",
                f"{pearson(outputs[method]['ours'], outputs[method]['theirs']):.4f}",
            ]
        else:
            row += ["–", "–", "–"]
        plain_ratio = "–" if method == "scorecam" else f"{ours_t / results['plain'] * args.batch / b:.2f}"
        row += [plain_ratio, floor_name, f"{ours_t / results[floor_key]:.2f}"]
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="resnet18")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scorecam-layer", default="layer2")
    parser.add_argument("--scorecam-batch", type=int, default=2)
    parser.add_argument(
        "--scorecam-chunk", type=int, default=64, help="masked images per forward pass (both libraries)"
    )
    parser.add_argument(
        "--scorecam-everywhere", action="store_true", help="also run Score-CAM on models other than resnet18"
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import cv2

        cv2.setNumThreads(args.threads)
    except ImportError:
        pass

    header = [
        "model",
        "method",
        "ours img/s",
        "pgc img/s",
        "speed-up",
        "Pearson",
        "÷ plain fwd",
        "floor",
        "÷ floor",
    ]
    rows = [row for name in args.models.split(",") for row in bench_model(name.strip(), args)]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(
        f"lficam.cams vs pytorch-grad-cam: {args.size}×{args.size} px, batch {args.batch} "
        f"(Score-CAM: {args.scorecam_layer}, batch {args.scorecam_batch}, chunks of {args.scorecam_chunk}); "
        f"CPU time, {args.threads} thread(s), best of {args.repeats}; random weights, torch {torch.__version__}"
    )
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-|-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)))


if __name__ == "__main__":
    main()
