# LFI-CAM training image: `docker build -t lficam .` then `docker run --gpus all lficam`
# (default: `python train.py`; add overrides, e.g. `docker run --gpus all lficam python train.py model=resnet50`).
# GPU-capable: PyPI's Linux torch wheels bring their own CUDA runtime; the host needs only the NVIDIA driver
# and the NVIDIA Container Toolkit. Without --gpus the same image trains on the CPU.
# Mount data and runs to keep them: -v "$PWD/data:/app/data" -v "$PWD/outputs:/app/outputs".
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# The same pins as the Makefile's TORCH_PINS (tests/test_docker.py checks that they agree).
ARG TORCH_PINS="torch==2.14.1 torchvision==0.29.1"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    WANDB_MODE=offline

WORKDIR /app

# torch first, in its own layer: it is the largest download and changes least often
RUN python -m pip install ${TORCH_PINS}

COPY pyproject.toml README.md ./
COPY lficam ./lficam
# before the install: lficam/conf links to conf/, and the wheel carries the configs (lficam-train etc.)
COPY conf ./conf
# the runtime extras (no test tools); the pins again so that pip never swaps torch
RUN python -m pip install ".[wandb,tensorboard,export,sweep]" ${TORCH_PINS}

COPY *.py ./

RUN useradd --create-home --uid 1000 lficam && mkdir -p data outputs && chown -R lficam /app
USER lficam

CMD ["python", "train.py"]
