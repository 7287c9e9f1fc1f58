# syntax=docker/dockerfile:1
# tokensync operator image.
#
#   docker build -t tokensync:dev .
#
# Two stages. The build stage installs the package and its runtime dependencies (no test
# extras) into a virtualenv, using Debian 12's own python3 (the same interpreter, at the
# same path, as the runtime image). The runtime stage is distroless: Debian 12's python3
# and its libraries, no shell, no package manager, no pip; it receives only that
# virtualenv, and runs as the numeric non-root user 65532 (so Kubernetes can verify
# runAsNonRoot) with a read-only root filesystem in mind (bytecode is compiled at build
# time; temporary files go to $TOKENSYNC_TMPDIR, a memory-backed emptyDir in deploy/).
#
# Base images are pinned by tag AND digest: the digest decides what is pulled, the tag
# says what it is. Security updates arrive as new digests behind the same tags. To pick
# them up (docs/operations/install.md, "Rebuilding for security updates"), look up the
# tags' current digests, e.g.
#   crane digest gcr.io/distroless/python3-debian12:nonroot
#   docker buildx imagetools inspect debian:12.13-slim --format '{{json .Manifest.Digest}}'
# replace them below (or pass --build-arg), rebuild, and publish a new image tag.
ARG BUILD_IMAGE=debian:12.13-slim@sha256:67b30a61dc87758f0caf819646104f29ecbda97d920aaf5edc834128ac8493d3
ARG RUNTIME_IMAGE=gcr.io/distroless/python3-debian12:nonroot@sha256:1a7c3d2445f783c51be174c8913624dc5bea2cd7ff1f94b9a229a16f0e40fa34

FROM ${BUILD_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
# python3-venv only: every runtime dependency ships manylinux wheels, so no compiler.
RUN apt-get update \
 && apt-get install --yes --no-install-recommends --no-install-suggests python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/tokensync
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
# Runtime dependencies only: `.` without the [test] extra. pip and setuptools are removed
# from the virtualenv, so the image has no package installer at all.
RUN /opt/tokensync/bin/pip install . \
 && /opt/tokensync/bin/pip uninstall --yes pip setuptools \
 && /opt/tokensync/bin/python -m compileall -q /opt/tokensync/lib \
 && /opt/tokensync/bin/tokensync --help > /dev/null

FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="tokensync" \
      org.opencontainers.image.description="Kubernetes operator that keeps OAuth2 client-credentials tokens fresh in Secrets" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/tokensync /opt/tokensync
ENV PATH=/opt/tokensync/bin:/usr/bin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TOKENSYNC_TMPDIR=/tmp
USER 65532:65532
EXPOSE 8080 9090
# Exec form only (there is no shell): the console script's `#!` line names the
# virtualenv's python, which links to the image's /usr/bin/python3.
ENTRYPOINT ["/opt/tokensync/bin/tokensync"]
CMD ["run", "--all-namespaces"]
