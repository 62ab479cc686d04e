# The workflow in a container (docs/deployment.md). Needs BuildKit (Docker >= 23 uses it by
# default; Debian's docker.io 20.10: DOCKER_BUILDKIT=1).
#   docker build -t codeinterp .                                   # FROM python:3.11-slim
#   docker build --build-arg BASE=nvidia/cuda:12.6.3-runtime-ubuntu24.04 \
#                --build-arg TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126" -t codeinterp:cuda .
#   docker run --rm --user "$(id -u):$(id -g)" -v "$PWD/run:/work" codeinterp \
#              --cores 2 --configfile /opt/codeinterp/tests/configs/tiny.yaml
# Optional inputs, for machines behind a TLS-inspecting proxy or without a registry:
#   --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt   pip trusts this CA bundle
#   a directory .wheels/ in the build context                pip installs from it alone (--no-index)
# scripts/container-test.sh uses both, on a base image made with debootstrap.
ARG BASE=python:3.11-slim

FROM ${BASE} AS base
# A prepared base (scripts/container-test.sh) already holds these: then apt is not touched.
RUN set -e; need=""; \
    command -v python3 >/dev/null || need="$need python3"; \
    python3 -c "import ensurepip" 2>/dev/null || need="$need python3-venv"; \
    command -v dot >/dev/null || need="$need graphviz"; \
    command -v bwrap >/dev/null || need="$need bubblewrap"; \
    [ -s /etc/ssl/certs/ca-certificates.crt ] || need="$need ca-certificates"; \
    if [ -n "$need" ]; then \
      apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $need \
      && rm -rf /var/lib/apt/lists/*; \
    fi

# Stages whose layers stay out of the final image: the wheelhouse (if any) and the sources
# without it. pyproject.toml is there so that the COPY has a match when .wheels is absent.
FROM base AS wheels
COPY pyproject.toml .wheel[s] /wheels/

FROM base AS source
COPY . /opt/codeinterp
RUN rm -rf /opt/codeinterp/.wheels

FROM base
ARG TORCH_SPEC=torch==2.13.0
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/codeinterp
# Dependencies before the sources, so that a source change keeps this layer. The editable
# install points at /opt/codeinterp/src, which the COPY below fills.
COPY pyproject.toml ./
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    --mount=type=secret,id=ca \
    --mount=type=cache,target=/root/.cache/pip \
    set -e; \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca SSL_CERT_FILE=/run/secrets/ca; fi; \
    from=""; if ls /wheels/*.whl >/dev/null 2>&1; then from="--no-index --find-links /wheels"; fi; \
    mkdir -p src/codeinterp && touch src/codeinterp/__init__.py; \
    python3 -m venv /opt/venv; \
    pip install $from $TORCH_SPEC; \
    pip install $from -e ".[dev]"
COPY --from=source /opt/codeinterp /opt/codeinterp

# Any uid may run the image (docker run --user): everything it writes goes to the mounted
# work directory or to /tmp, and getpass (torch, snakemake) needs a user name without passwd.
ENV HOME=/tmp \
    USER=codeinterp \
    LOGNAME=codeinterp \
    XDG_CACHE_HOME=/tmp/.cache \
    HF_HOME=/tmp/.cache/huggingface \
    NUMBA_CACHE_DIR=/tmp/.cache/numba \
    MPLCONFIGDIR=/tmp/.cache/matplotlib
WORKDIR /work
ENTRYPOINT ["snakemake", "-s", "/opt/codeinterp/Snakefile", "-d", "/work"]
CMD ["--cores", "all"]
