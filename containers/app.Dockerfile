# The app image: the API service (`cleanroom serve`) and the runner (`cleanroom runner`).
# Runs as the non-root user `cleanroom` (uid 10001) by default. docker-compose.yml runs the runner
# service as root because it talks to the Docker socket (the reason is written there).
#
# Build context: the repo root (see .dockerignore). containers/build.py builds it with a local
# Debian base and a host-side wheelhouse; on a machine with a registry and the package index,
# `docker compose build` works as is.
ARG BASE_IMAGE=python:3.11-slim

# deps: the virtualenv with the project's dependencies (pip still in it, for the next stage).
FROM ${BASE_IMAGE} AS deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
# requirements-*.txt and wheelhouse/ (when build.py made one).
COPY containers/ /build/
# Offline from the wheelhouse when it has everything; otherwise the package index.
RUN python3 -m venv /opt/venv \
 && if /opt/venv/bin/pip install --no-compile --no-index --find-links /build/wheelhouse \
        -r /build/requirements-app.txt; then :; \
    else echo "wheelhouse incomplete: installing from the package index" >&2 \
     && /opt/venv/bin/pip install --no-compile --find-links /build/wheelhouse \
        -r /build/requirements-app.txt; fi

# project: the cleanroom distribution built and installed over deps, compiled in place; its files
# (package, dist-info, console script) are collected under /staging with their final paths.
FROM deps AS project
# README.m[d]: copied when present (pyproject.toml names it as the readme).
COPY pyproject.toml README.m[d] /build/src/
COPY cleanroom/ /build/src/cleanroom/
RUN test -f /build/src/README.md || echo "# cleanroom" > /build/src/README.md \
 && if /opt/venv/bin/pip install --no-compile --no-deps --no-index --find-links /build/wheelhouse \
        /build/src; then :; \
    else echo "wheelhouse lacks the build backend: installing it from the package index" >&2 \
     && /opt/venv/bin/pip install --no-compile --no-deps --find-links /build/wheelhouse /build/src; fi \
 && /opt/venv/bin/pip check \
 && site="$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
 && /opt/venv/bin/python -m compileall -q --invalidation-mode unchecked-hash "$site/cleanroom" \
 && mkdir /staging \
 && cp -a --parents "$site"/cleanroom "$site"/cleanroom-*.dist-info /opt/venv/bin/cleanroom /staging/

# venv: deps without pip, compiled. Rebuilt only when the requirements or the base change, so
# editing the sources never copies this big layer again.
FROM deps AS venv
RUN site="$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
 && rm -rf /opt/venv/bin/pip* /opt/venv/bin/Activate.ps1 "$site"/pip "$site"/pip-* \
        "$site"/setuptools "$site"/setuptools-* "$site"/pkg_resources "$site"/_distutils_hack \
        "$site"/distutils-precedence.pth \
 && /opt/venv/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/venv/lib

FROM ${BASE_IMAGE}
LABEL cleanroom=1 org.opencontainers.image.title="cleanroom app"
# Written directly: Debian minbase has no useradd. The state folders are owned by `cleanroom`,
# so named volumes mounted there start out writable by it.
RUN echo "cleanroom:x:10001:10001:cleanroom:/var/lib/cleanroom:/usr/sbin/nologin" >> /etc/passwd \
 && echo "cleanroom:x:10001:" >> /etc/group \
 && mkdir -p /var/lib/cleanroom /var/lib/cleanroom-runner /run/cleanroom-shared \
 && chown 10001:10001 /var/lib/cleanroom /var/lib/cleanroom-runner /run/cleanroom-shared \
 && chmod 0700 /var/lib/cleanroom /var/lib/cleanroom-runner \
 && chmod 0755 /run/cleanroom-shared
COPY --from=venv /opt/venv /opt/venv
COPY --from=project /staging/ /
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 LANG=C.UTF-8
USER 10001:10001
WORKDIR /var/lib/cleanroom
EXPOSE 8000
# For the default command (the API); compose sets its own checks per service.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
CMD ["cleanroom", "serve"]
