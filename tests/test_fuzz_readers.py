"""Fuzzing every reader of a user file: CIFAR batches (Python pickles and binary records, class-name files),
images of an image folder, checkpoints, safetensors exports and backbone weights files.

Each test starts from a valid file of the kind, edits it (tests/fuzzing.py) and asserts that the reader
succeeds or says one sentence (UserError), with bounded memory; the valid files themselves must be read, with
the values written (``test_the_valid_*``). ``LFICAM_FUZZ_EXAMPLES=20000`` runs a long
budget of random examples per test instead of the suite's fixed, derandomised one.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
import zlib
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save as save_safetensors
from torchvision import tv_tensors

import lficam
from lficam.checkpoints.loading import METADATA_KEY, read_checkpoint, read_safetensors
from lficam.core.errors import UserError
from lficam.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from lficam.data.image_folder import ImageFileDataset, ImageFolderDataModule
from lficam.models.weight_files import load_matching_state, load_weights_file
from tests.fuzzing import bounded_memory, check_reader, file_bytes, fuzz_settings, mutated, read_valid

MODEL = {"backbone": "cifar_resnet20", "num_classes": 2, "attention": "none"}


# --- valid files to start from ---------------------------------------------------------------------------


CIFAR_PIXELS = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
CIFAR_LABELS = [3, 7]


def _cifar_batch(protocol: int, labels: str = "labels") -> bytes:
    batch = {b"batch_label": b"training batch 1 of 5", labels.encode(): CIFAR_LABELS, b"data": CIFAR_PIXELS}
    batch[b"filenames"] = [b"a.png", b"b.png"]
    data = pickle.dumps(batch, protocol=protocol)
    # the authors' files were written by Python 2, whose numpy lived under numpy.core
    return data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray") if protocol == 2 else data


CIFAR10_BATCHES = (_cifar_batch(2), _cifar_batch(4))
CIFAR100_BATCHES = (_cifar_batch(2, "fine_labels"), _cifar_batch(4, "coarse_labels"))
CLASS_NAMES = ["airplane", "automobile"] * 5
CIFAR_META = pickle.dumps({b"label_names": [n.encode() for n in CLASS_NAMES], b"num_vis": 3072}, protocol=2)
CIFAR_BINARY = bytes(range(256)) * 36 + bytes(3 * 3073 - 256 * 36)  # three records, label bytes 0, 1, 2

IMAGE_PIXELS = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3) * 5
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "PPM", "TIFF", "WEBP")
LOSSY_FORMATS = ("JPEG", "WEBP")  # Pillow's defaults: the rest decode to IMAGE_PIXELS exactly


def _image(format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(IMAGE_PIXELS).save(buffer, format=format, **options)
    return buffer.getvalue()


IMAGES = tuple(_image(f) for f in IMAGE_FORMATS)


@cache
def _network() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return lficam.create_model(**MODEL).state_dict()


@cache
def _checkpoints() -> tuple[bytes, bytes]:
    """A whole checkpoint of a small model, and one with a single tensor (its structure is all header)."""
    files = []
    for state in (_network(), {"fc.bias": torch.zeros(2)}):
        checkpoint = {
            "epoch": 0,
            "state_dict": {f"net.{k}": v for k, v in state.items()},
            "hyper_parameters": {"model_config": MODEL},
            "ShapesDataModule": {"lficam_input": {"image_size": 16, "mean": [0.5] * 3, "std": [0.25] * 3}},
        }
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        files.append(buffer.getvalue())
    return tuple(files)


@cache
def _exports() -> tuple[bytes, bytes]:
    metadata = {METADATA_KEY: json.dumps({"model_config": MODEL, "input": {"image_size": 16}})}
    return save_safetensors(_network(), metadata), save_safetensors({"fc.bias": torch.zeros(2)}, metadata)


def _weights_state() -> dict[str, torch.Tensor]:
    return {
        "conv1.weight": torch.arange(64 * 3 * 7 * 7, dtype=torch.float32).reshape(64, 3, 7, 7),
        "bn1.running_mean": torch.arange(64, dtype=torch.float32),
    }


@cache
def _weights() -> tuple[bytes, bytes]:
    """A backbone's weights as torch.save writes them (.pth) and as safetensors."""
    state = _weights_state()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue(), save_safetensors(state)


class _Stem(torch.nn.Module):
    """The module the weights of :func:`_weights` fit: every key of one, with its shape, is in the other
    (a whole torchvision ResNet would refuse them, so the fuzz would never reach a load that succeeds)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 64, 7, bias=False)
        self.bn1 = torch.nn.Module()
        self.bn1.register_buffer("running_mean", torch.zeros(64))
        self.fc = torch.nn.Linear(64, 2)  # the classifier the head replaces: ignored


def _load_backbone_weights(path: Path) -> torch.nn.Module:
    module = _Stem()
    state = load_weights_file(path)
    load_matching_state(
        module, state, source=str(path), target="resnet18", ignored=lambda k: k.startswith("fc.")
    )
    return module


@st.composite
def _member_mutated(draw: st.DrawFn, archive: bytes, suffix: str) -> bytes:
    """A torch zip whose member ending in ``suffix`` (the pickle) is mutated, the archive itself intact."""
    source, out = zipfile.ZipFile(io.BytesIO(archive)), io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            content = source.read(info.filename)
            target.writestr(info, draw(mutated(content)) if info.filename.endswith(suffix) else content)
    return out.getvalue()


@st.composite
def _header_mutated(draw: st.DrawFn, export: bytes) -> bytes:
    """A safetensors file whose JSON header is mutated, its length prefix rewritten to match."""
    length = int.from_bytes(export[:8], "little")
    header = draw(mutated(export[8 : 8 + length], hot=64))
    return len(header).to_bytes(8, "little") + header + export[8 + length :]


# --- the readers -------------------------------------------------------------------------------------------


def _cifar_python(module: type) -> object:
    return lambda path: module(path.parent)._python_arrays(path)


@fuzz_settings(default=150)
@given(content=file_bytes(*CIFAR10_BATCHES), variant=st.sampled_from((CIFAR10DataModule, CIFAR100DataModule)))
def test_cifar_python_batch(content: bytes, variant: type) -> None:
    check_reader(_cifar_python(variant), content, "data_batch_1")


@fuzz_settings(default=50)
@given(content=file_bytes(*CIFAR100_BATCHES), labels=st.sampled_from(("fine", "coarse")))
def test_cifar100_python_batch(content: bytes, labels: str) -> None:
    check_reader(lambda p: CIFAR100DataModule(p.parent, labels=labels)._python_arrays(p), content, "train")


def test_an_unpickler_message_of_two_lines_becomes_one_sentence(tmp_path: Path) -> None:
    # Found by the long fuzz budget (LFICAM_FUZZ_EXAMPLES=1500): a PERSID opcode makes CPython's unpickler
    # say "A load persistent id instruction was encountered,\nbut no persistent_load function ...".
    persistent_id = b"\x80\x02Pfoo\n."
    check_reader(_cifar_python(CIFAR100DataModule), persistent_id, "train")
    (tmp_path / "train").write_bytes(persistent_id)
    with pytest.raises(UserError, match="persistent id instruction was encountered, but no persistent_load"):
        _cifar_python(CIFAR100DataModule)(tmp_path / "train")


@fuzz_settings(default=50)
@given(content=file_bytes(CIFAR_META))
def test_cifar_python_class_names(content: bytes) -> None:
    check_reader(
        lambda p: CIFAR10DataModule(p.parent)._class_names("python", p.parent), content, "batches.meta"
    )


@fuzz_settings(default=50)
@given(content=file_bytes(CIFAR_BINARY), variant=st.sampled_from((CIFAR10DataModule, CIFAR100DataModule)))
def test_cifar_binary_batch(content: bytes, variant: type) -> None:
    check_reader(lambda p: variant(p.parent)._read("binary", p.parent, [p.name]), content, "data_batch_1.bin")


@fuzz_settings(default=30)
@given(content=file_bytes(b"airplane\nautomobile\n" * 5))
def test_cifar_binary_class_names(content: bytes) -> None:
    check_reader(
        lambda p: CIFAR10DataModule(p.parent)._class_names("binary", p.parent), content, "batches.meta.txt"
    )


_FOLDER = ImageFolderDataModule("unused", num_classes=2, image_size=16)


@fuzz_settings(default=150)
@given(content=file_bytes(*IMAGES), train=st.booleans())
def test_image_folder_image(content: bytes, train: bool) -> None:
    def read(path: Path) -> object:
        return ImageFileDataset([(path, 0)], _FOLDER.transforms(train), random=train)[0]

    check_reader(read, content, "image.jpg")


@fuzz_settings(default=100)
@given(content=st.one_of(file_bytes(*_checkpoints()), _member_mutated(_checkpoints()[1], "data.pkl")))
def test_checkpoint(content: bytes) -> None:
    check_reader(read_checkpoint, content, "last.ckpt")


@fuzz_settings(default=60)
@given(content=st.one_of(file_bytes(*_checkpoints()), _member_mutated(_checkpoints()[0], "data.pkl")))
def test_checkpoint_load(content: bytes) -> None:
    check_reader(lficam.load, content, "last.ckpt")


@fuzz_settings(default=100)
@given(content=st.one_of(file_bytes(*_exports()), *(_header_mutated(e) for e in _exports())))
def test_safetensors_export(content: bytes) -> None:
    check_reader(read_safetensors, content, "model.safetensors")


@fuzz_settings(default=60)
@given(content=st.one_of(file_bytes(*_exports()), _header_mutated(_exports()[0])))
def test_safetensors_export_load(content: bytes) -> None:
    check_reader(lficam.load, content, "model.safetensors")


@fuzz_settings(default=100)
@given(
    content=st.one_of(file_bytes(*_weights()), _member_mutated(_weights()[0], "data.pkl")),
    suffix=st.sampled_from((".pth", ".safetensors")),
)
def test_backbone_weights_file(content: bytes, suffix: str) -> None:
    check_reader(_load_backbone_weights, content, f"weights{suffix}")


# --- the valid files are read, with the values written: what the fuzz finds is about the edits ------------


def _assert_same_tensors(read: dict[str, torch.Tensor], written: dict[str, torch.Tensor]) -> None:
    assert sorted(read) == sorted(written)
    for key, tensor in written.items():
        assert read[key].dtype == tensor.dtype and torch.equal(read[key], tensor), key


@pytest.mark.parametrize(
    ("variant", "labels", "content"),
    [
        (CIFAR10DataModule, "fine", CIFAR10_BATCHES[0]),
        (CIFAR10DataModule, "fine", CIFAR10_BATCHES[1]),
        (CIFAR100DataModule, "fine", CIFAR100_BATCHES[0]),
        (CIFAR100DataModule, "coarse", CIFAR100_BATCHES[1]),
    ],
    ids=["cifar10-protocol2", "cifar10-protocol4", "cifar100-fine", "cifar100-coarse"],
)
def test_the_valid_cifar_python_batches_are_read(variant: type, labels: str, content: bytes) -> None:
    pixels, read_labels = read_valid(
        lambda p: variant(p.parent, labels=labels)._python_arrays(p), content, "data_batch_1"
    )
    assert pixels.dtype == torch.uint8 and torch.equal(
        pixels, torch.from_numpy(CIFAR_PIXELS).reshape(2, 3, 32, 32)
    )
    assert read_labels.tolist() == CIFAR_LABELS


def test_the_valid_cifar_binary_batch_and_class_names_are_read() -> None:
    records = torch.from_numpy(np.frombuffer(CIFAR_BINARY, dtype=np.uint8).reshape(3, 3073).copy())
    pixels, labels = read_valid(
        lambda p: CIFAR10DataModule(p.parent)._read("binary", p.parent, [p.name]),
        CIFAR_BINARY,
        "data_batch_1.bin",
    )
    assert torch.equal(pixels, records[:, 1:].reshape(3, 3, 32, 32)) and labels.tolist() == [0, 1, 2]
    # CLASS_NAMES, not the built-in CIFAR-10 names that a refused file falls back to
    python_names = read_valid(
        lambda p: CIFAR10DataModule(p.parent)._class_names("python", p.parent), CIFAR_META, "batches.meta"
    )
    binary_names = read_valid(
        lambda p: CIFAR10DataModule(p.parent)._class_names("binary", p.parent),
        "".join(f"{n}\n" for n in CLASS_NAMES).encode(),
        "batches.meta.txt",
    )
    assert python_names == binary_names == CLASS_NAMES


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize(("format", "content"), zip(IMAGE_FORMATS, IMAGES, strict=True), ids=IMAGE_FORMATS)
def test_the_valid_images_are_read(format: str, content: bytes, train: bool) -> None:
    transform = _FOLDER.transforms(train)
    item = read_valid(lambda p: ImageFileDataset([(p, 0)], transform, random=train)[0], content, "image.jpg")
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    assert item["label"].item() == 0 and item["index"].item() == 0
    # the pixels written, through the same transform (a training crop drawn as the dataset draws item 0's)
    with ImageFileDataset([(Path("unused"), 0)], transform, random=train).seeded(0):
        expected = transform(tv_tensors.Image(torch.from_numpy(IMAGE_PIXELS).permute(2, 0, 1)))
    if format in LOSSY_FORMATS:  # a black or shuffled image is off by about 2 on average
        assert (item["image"] - expected).abs().mean() < 0.5
    else:
        torch.testing.assert_close(item["image"], expected, rtol=0, atol=1e-5)


def test_the_valid_checkpoints_are_read_and_loaded() -> None:
    for content, state in zip(_checkpoints(), (_network(), {"fc.bias": torch.zeros(2)}), strict=True):
        checkpoint = read_valid(read_checkpoint, content, "last.ckpt")
        _assert_same_tensors(checkpoint["state_dict"], {f"net.{k}": v for k, v in state.items()})
        assert checkpoint["hyper_parameters"] == {"model_config": MODEL}
    model = read_valid(lficam.load, _checkpoints()[0], "last.ckpt")
    _assert_same_tensors(model.state_dict(), _network())
    assert model.lficam_metadata["model_config"] == MODEL
    assert model.lficam_metadata["input"] == {"image_size": 16, "mean": [0.5] * 3, "std": [0.25] * 3}


def test_the_valid_exports_are_read_and_loaded() -> None:
    for content, state in zip(_exports(), (_network(), {"fc.bias": torch.zeros(2)}), strict=True):
        tensors, metadata = read_valid(read_safetensors, content, "model.safetensors")
        _assert_same_tensors(tensors, state)
        assert metadata == {"model_config": MODEL, "input": {"image_size": 16}}
    model = read_valid(lficam.load, _exports()[0], "model.safetensors")
    _assert_same_tensors(model.state_dict(), _network())
    assert model.lficam_metadata["model_config"] == MODEL


@pytest.mark.parametrize(
    ("content", "suffix"), zip(_weights(), (".pth", ".safetensors"), strict=True), ids=["pth", "safetensors"]
)
def test_the_valid_backbone_weights_are_read_and_fit(content: bytes, suffix: str) -> None:
    _assert_same_tensors(read_valid(load_weights_file, content, f"weights{suffix}"), _weights_state())
    module = read_valid(_load_backbone_weights, content, f"weights{suffix}")
    _assert_same_tensors(
        {k: v for k, v in module.state_dict().items() if not k.startswith("fc.")}, _weights_state()
    )


@pytest.mark.parametrize(
    "content",
    [
        b"\x80\x04\x8e" + (2**62).to_bytes(8, "little"),  # BINBYTES8 of 2^62 bytes, 11 bytes: MemoryError
        b"\x80\x04\x8e" + (2**63 + 5).to_bytes(8, "little"),  # past PY_SSIZE_T_MAX: OverflowError
        b"\x80\x02Nr\xff\xff\xff\x7f.",  # LONG_BINPUT 2^31-1: a zero-filled 16 GiB memo
        b"\x80\x04\x95" + (2**62).to_bytes(8, "little") + b"N.",  # a FRAME of 2^62 bytes
    ],
    ids=["binbytes8", "overflow", "memo", "frame"],
)
def test_a_pickles_size_fields_are_not_obeyed(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "data_batch_1"
    path.write_bytes(content)
    with (
        bounded_memory(),
        pytest.raises(UserError, match=r"^Refusing .*(declares more bytes|out of sequence)"),
    ):
        CIFAR10DataModule(tmp_path)._python_arrays(path)


def test_an_arrays_shape_must_match_its_bytes(tmp_path: Path) -> None:
    data = _cifar_batch(2)
    shape = b"K\x02M\x00\x0c\x86"  # (2, 3072): BININT1 2, BININT2 3072, TUPLE2
    assert data.count(shape) == 1
    path = tmp_path / "data_batch_1"
    path.write_bytes(data.replace(shape, b"\x8a\x06" + (2**40).to_bytes(6, "little") + shape[2:]))  # LONG1
    with (
        bounded_memory(),
        pytest.raises(UserError, match=r"an array of shape \(1099511627776, 3072\) comes with"),
    ):
        CIFAR10DataModule(tmp_path)._python_arrays(path)


def test_a_model_config_is_not_built_before_its_shapes_match(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    metadata = {METADATA_KEY: json.dumps({"model_config": {**MODEL, "num_classes": 10**12}})}
    path.write_bytes(save_safetensors({"fc.bias": torch.zeros(2)}, metadata))
    with bounded_memory(), pytest.raises(UserError, match=r"do not fit 'cifar_resnet20'"):
        lficam.load(path)


def test_a_legacy_torch_file_is_refused_with_how_to_convert_it(tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(UserError, match=r"format of PyTorch before 1\.6.*re-save it with torch\.save"):
        load_weights_file(path)


def test_an_image_past_the_decompression_bomb_limit_is_one_sentence(tmp_path: Path) -> None:
    png = bytearray(_image("PNG"))
    png[16:24] = (15000).to_bytes(4, "big") * 2  # IHDR width and height: 225 million pixels
    png[29:33] = zlib.crc32(bytes(png[12:29])).to_bytes(4, "big")
    path = tmp_path / "huge.png"
    path.write_bytes(bytes(png))
    with bounded_memory(), pytest.raises(UserError, match=r"its 225000000 pixels exceed PIL's limit of \d+"):
        ImageFileDataset([(path, 0)], _FOLDER.transforms(False))[0]
