# The sandbox image: where the compute phase (untrusted plugin code) and the release phase run.
# It holds the scientific stack and cleanroom's sandbox modules, nothing else: no server code,
# no pip, no compilers. The runner starts it as `python -I -m cleanroom.sandbox.<phase>` with a
# read-only root filesystem, so all bytecode is compiled here.
#
# Build context: the repo root (see .dockerignore). containers/build.py builds it with a local
# Debian base and a host-side wheelhouse; on a machine with a registry and the package index,
# `docker build -f containers/sandbox.Dockerfile .` works as is.
ARG BASE_IMAGE=python:3.11-slim

# deps: the virtualenv with the requirements, without pip, compiled. Rebuilt only when the
# requirements or the base change, so editing the sources never copies the big layer again.
FROM ${BASE_IMAGE} AS deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
# requirements-*.txt and wheelhouse/ (when build.py made one).
COPY containers/ /build/
# Offline from the wheelhouse when it has everything; otherwise the package index.
RUN python3 -m venv /opt/venv \
 && if /opt/venv/bin/pip install --no-compile --no-index --find-links /build/wheelhouse \
        -r /build/requirements-sandbox.txt; then :; \
    else echo "wheelhouse incomplete: installing from the package index" >&2 \
     && /opt/venv/bin/pip install --no-compile --find-links /build/wheelhouse \
        -r /build/requirements-sandbox.txt; fi \
 && site="$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
 && rm -rf /opt/venv/bin/pip* /opt/venv/bin/Activate.ps1 "$site"/pip "$site"/pip-* \
        "$site"/setuptools "$site"/setuptools-* "$site"/pkg_resources "$site"/_distutils_hack \
        "$site"/distutils-precedence.pth \
 && /opt/venv/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/venv/lib \
 && rm -rf /build

# src: only the sandbox runtime files, as the `cleanroom` package, compiled in place and collected
# under /staging with their final paths.
FROM deps AS src
COPY cleanroom/__init__.py cleanroom/hookspecs.py cleanroom/plugin_helpers.py /build/cleanroom/
COPY cleanroom/sandbox/ /build/cleanroom/sandbox/
RUN site="$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
 && cp -r /build/cleanroom "$site/cleanroom" \
 && /opt/venv/bin/python -m compileall -q --invalidation-mode unchecked-hash "$site/cleanroom" \
 && mkdir /staging && cp -a --parents "$site/cleanroom" /staging/

FROM ${BASE_IMAGE}
LABEL cleanroom=1 org.opencontainers.image.title="cleanroom sandbox"
COPY --from=deps /opt/venv /opt/venv
COPY --from=src /staging/ /
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 LANG=C.UTF-8
USER 65534:65534
WORKDIR /tmp
