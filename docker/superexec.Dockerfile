# syntax=docker/dockerfile:1
# The app runtime of a poisonlab federation: Flower's SuperExec with poisonlab and its pinned dependencies.
#
# One image runs both apps: the SuperExec beside the SuperLink launches poisonlab's ServerApp, the one beside
# each SuperNode launches its ClientApp (`scripts.apps:server_app` / `scripts.apps:client_app`, named by
# the one-file app that `flwr run` submits). Build it from the repository root (the compose files do):
#   docker build -f docker/superexec.Dockerfile -t poisonlab/superexec:0.1.0 .
#
# poisonlab requires Python 3.11 (pyproject.toml: requires-python >=3.11,<3.12) while Flower's plain
# `flwr/superexec:1.41.0` tag is Python 3.13, so the base is Flower's Python 3.11 Ubuntu variant of the
# same release (BASE_VARIANT; Flower publishes one per supported Python version).
ARG FLWR_VERSION=1.41.0
ARG BASE_VARIANT=py3.11-ubuntu24.04
FROM flwr/superexec:${FLWR_VERSION}-${BASE_VARIANT}

LABEL org.opencontainers.image.title="poisonlab SuperExec" \
      org.opencontainers.image.description="Flower SuperExec running poisonlab's ServerApp and ClientApps" \
      org.opencontainers.image.licenses="Apache-2.0"

# Where pip may also take torch and torchvision from (pip reads this build argument from its environment).
# Empty: PyPI, whose Linux wheels carry CUDA and run on CPU-only and GPU hosts alike (large).
# https://download.pytorch.org/whl/cpu gives small CPU-only images; its `2.14.1+cpu` builds satisfy
# poisonlab's `torch==2.14.1` pin.
ARG PIP_EXTRA_INDEX_URL=""

# The base image's user (app, uid 49999) owns Flower's virtual environment, so pip installs as that user.
# The checkout is bind-mounted for this step only and copied to a scratch folder (setuptools writes build
# files next to the sources), so no layer keeps the sources; pyproject.toml's pins decide every version,
# and flwr stays at the base image's 1.41.0 because poisonlab pins the same. Importing the apps fails the
# build, not the first round, when something is missing.
RUN --mount=type=bind,source=.,target=/tmp/checkout \
    cp -r /tmp/checkout /tmp/poisonlab-src \
    && pip install --no-cache-dir /tmp/poisonlab-src \
    && rm -rf /tmp/poisonlab-src \
    && python -c "import scripts.apps"

# Datasets come from a read-only volume at /data (torchvision layout, extracted: `poisonlab-data --root DIR`
# on the host); containers never download (POISONLAB_OFFLINE) so missing data fails at once, naming the
# files. The ServerApp writes run folders under the output_dir of the submitted config (/outputs in the
# compose files). The federation's machines talk to each other only: no update check, no usage telemetry
# to Flower's servers (a ClientApp's network has no route out at all, see compose.supernodes.yaml).
ENV POISONLAB_DATA=/data \
    POISONLAB_OFFLINE=1 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    MPLBACKEND=Agg

ENTRYPOINT ["flower-superexec"]
