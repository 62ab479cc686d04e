# The workflow in a container. No registry may be reachable, so the base image is a build
# argument: e.g. a Debian rootfs imported with `debootstrap --variant=minbase bookworm rootfs`
# and `tar -C rootfs -c . | docker import - local/debian:bookworm`.
ARG BASE=debian:bookworm
FROM ${BASE}
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev gcc ca-certificates bubblewrap git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/codeinterp
COPY . .
RUN PYTHON=python3 bash scripts/setup.sh
ENV PATH=/opt/codeinterp/.venv/bin:$PATH
WORKDIR /work
ENTRYPOINT ["snakemake", "-s", "/opt/codeinterp/Snakefile", "--cores", "2"]
