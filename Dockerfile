# topk-service image: `docker build -t topk-service .` (CPU JAX), or for NVIDIA GPUs
# `docker build --build-arg JAX_EXTRA=cuda -t topk-service:cuda .` and run with `--gpus 1`.
# One container = one server process = one accelerator; scale out with more containers.

ARG PYTHON_VERSION=3.11

# ---- build: wheels for the app and its dependencies (compilers and caches stay here) ----
FROM python:${PYTHON_VERSION}-slim AS build
# "" installs the CPU jaxlib; "cuda" adds the project's `cuda` extra, jax[cuda12] (CUDA and cuDNN
# from pip wheels, so the host needs only the NVIDIA driver and the container toolkit).
ARG JAX_EXTRA=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY api ./api
COPY core ./core
COPY service ./service
# The exact versions of requirements.lock (`make lock`: the service and gRPC, pinned as the tests
# ran them), then the package itself without re-resolving anything. JAX_EXTRA=cuda then adds the
# `cuda` extra's wheels pinned to the locked jax (jax[cuda12]==X pins jaxlib and the CUDA plugin to
# X), so the GPU image runs the jax the tests ran; any other JAX_EXTRA is refused.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --upgrade pip \
 && /opt/venv/bin/pip install -r requirements.lock \
 && /opt/venv/bin/pip install --no-deps . \
 && case "$JAX_EXTRA" in \
      "") ;; \
      cuda) /opt/venv/bin/pip install "jax[cuda12]==$(/opt/venv/bin/python -c 'import jax; print(jax.__version__)')" ;; \
      *) echo "JAX_EXTRA must be '' or 'cuda', got '$JAX_EXTRA'" >&2; exit 1 ;; \
    esac

# ---- runtime: the venv only, a non-root user, no build tools ----
FROM python:${PYTHON_VERSION}-slim AS runtime
ARG JAX_EXTRA=""
# A fixed uid/gid (10001), named numerically in USER: Kubernetes' runAsNonRoot can only verify a
# numeric user, and the manifests in deploy/ set the same ids (fsGroup makes volumes writable).
RUN groupadd --gid 10001 topk \
 && useradd --uid 10001 --gid topk --create-home --home-dir /home/topk --shell /usr/sbin/nologin topk \
 && mkdir -p /var/cache/topk-service/jax && chown -R topk:topk /var/cache/topk-service
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TOPK_HOST=0.0.0.0 \
    TOPK_PORT=8000 \
    TOPK_COMPILATION_CACHE_DIR=/var/cache/topk-service/jax
# CPU unless built for CUDA (then CUDA only: a broken driver fails the start instead of silently
# serving from the CPU); override at run time with -e JAX_PLATFORMS=...
ENV JAX_PLATFORMS=${JAX_EXTRA:+cuda}
ENV JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
USER 10001:10001
WORKDIR /home/topk
# Prime the compilation cache: build the cover kernels now, so that a container loads them and is
# ready in seconds (bench/RESULTS.md, "Start-up"). They are only valid on a CPU with the same
# instruction set as the build machine's (the store's fingerprint says so, and a mismatch just
# compiles at start-up); a CUDA image is primed on its GPU at first start instead (mount the volume).
# PRIME=0 skips it (a smaller, slower-starting image).
ARG PRIME=1
RUN if [ "$PRIME" = "1" ] && [ -z "$JAX_EXTRA" ]; then python -m service --prime --log-level warning; fi
# Compiled executables survive restarts here, so a new container warms up from the cache; a new
# volume starts with the image's primed contents. The cache is trusted code: mount a volume
# private to this service, never a shared one.
VOLUME ["/var/cache/topk-service/jax"]
EXPOSE 8000 8001
# Liveness only (/healthz never touches the device); orchestrators route on /readyz instead.
# start-period covers the cover kernels' compile on a cold cache (an unprimed image, another CPU).
HEALTHCHECK --interval=10s --timeout=3s --start-period=300s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('TOPK_PORT', '8000')}/healthz\", timeout=2)"]
# Exec form: the server is PID 1 and gets SIGTERM, so it drains before the container stops.
ENTRYPOINT ["python", "-m", "service"]
