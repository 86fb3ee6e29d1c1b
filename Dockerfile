# syntax=docker/dockerfile:1
#
# sketchserve: the gRPC sketch service with the bundled face model.
#
#   docker build -t sketchserve .                          # CUDA torch on a CUDA runtime base
#   docker build --build-arg VARIANT=cpu -t sketchserve:cpu .   # CPU-only, no CUDA libraries
#   docker run --gpus all -p 50051:50051 -p 9090:9090 sketchserve
#   docker build --build-arg EXTRAS=server,train -t sketchserve:cuda-train .  # also `sketchserve train` (deploy/kubernetes/training)
#
# Every `sketchserve serve` flag is also an environment variable
# (SKETCHSERVE_PORT, SKETCHSERVE_MAX_BATCH_SIZE, ...): override with `docker run -e`.
# Another model: mount it and set SKETCHSERVE_MODEL_DIR.

# cuda (default) or cpu: picks the base image and the torch build below.
ARG VARIANT=cuda
# The CUDA torch wheels bring their own CUDA libraries; the runtime base brings
# the driver hooks of the NVIDIA container toolkit.
ARG CUDA_BASE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
# The same Ubuntu, without CUDA, for the CPU image: one Python (3.12) either way.
ARG CPU_BASE=ubuntu:24.04

FROM ${CUDA_BASE} AS base-cuda
ENV TORCH_INDEX=https://download.pytorch.org/whl/cu128

FROM ${CPU_BASE} AS base-cpu
ENV TORCH_INDEX=https://download.pytorch.org/whl/cpu

# base-cuda or base-cpu: a stage above, not an image to tag.
# hadolint ignore=DL3006
FROM base-${VARIANT} AS base
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Ubuntu's python3 follows the release's security updates: pinning its exact
# Debian version would break the build at each update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*

FROM base AS build
# Keep in step with constraints.txt (pip is given both, so a mismatch fails the build).
ARG TORCH_VERSION=2.13.0
# The protobuf compiler; the grpcio it pulls in is the one the image runs.
ARG GRPC_TOOLS_VERSION=1.85.1
# The package's extras: server (the default image), or server,train for training Jobs.
ARG EXTRAS=server
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY constraints.txt ./
# torch alone from its index (the CUDA or the CPU build), everything else from PyPI.
RUN pip install --no-cache-dir -c constraints.txt --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}" \
    && pip install --no-cache-dir -c constraints.txt "grpcio-tools==${GRPC_TOOLS_VERSION}"
COPY pyproject.toml README.md ./
COPY proto/ proto/
COPY sketchserve/ sketchserve/
COPY client/ client/
COPY server/ server/
COPY training/ training/
# Generate the protobuf code (as `make proto` does), install it with the package, and
# check the installed copy imports (-I: not the source tree in the working directory).
RUN python -m grpc_tools.protoc --proto_path=sketchserve/pb=proto \
        --python_out=. --grpc_python_out=. --pyi_out=. proto/sketch/v1/sketch.proto \
        proto/inference/open_inference_grpc.proto proto/inference/repository_index.proto \
    && pip install --no-cache-dir -c constraints.txt ".[${EXTRAS}]" \
    && pip uninstall -y grpcio-tools \
    && python -I -c "from sketchserve.pb.sketch.v1 import sketch_pb2_grpc; import sketchserve.server.main"

FROM base AS runtime
ARG VARIANT
LABEL org.opencontainers.image.title="sketchserve" \
      org.opencontainers.image.description="Sketch-RNN VAE latent space of hand-drawn sketches, served over gRPC" \
      org.opencontainers.image.licenses="Apache-2.0" \
      dev.sketchserve.variant="${VARIANT}"
RUN groupadd --system --gid 10001 sketchserve \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin sketchserve
COPY --from=build /opt/venv /opt/venv
COPY models/face /opt/sketchserve/models/face
# All interfaces inside the container (a bare `sketchserve serve` binds 127.0.0.1 only);
# TLS and tokens come from mounted files named by SKETCHSERVE_TLS_* / SKETCHSERVE_AUTH_TOKENS_FILE.
ENV PATH=/opt/venv/bin:$PATH \
    SKETCHSERVE_MODEL_DIR=/opt/sketchserve/models/face \
    SKETCHSERVE_HOST=0.0.0.0 \
    SKETCHSERVE_PORT=50051 \
    SKETCHSERVE_METRICS_PORT=9090 \
    SKETCHSERVE_DEVICE=auto
WORKDIR /opt/sketchserve
USER 10001:10001
# gRPC, then Prometheus metrics.
EXPOSE 50051 9090
# The standard grpc.health.v1 check, on the port the server listens on;
# start-period covers loading, checksum verification and warm-up.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "sketchserve.client.health"]
ENTRYPOINT ["sketchserve"]
CMD ["serve"]
