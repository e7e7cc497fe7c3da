# The app image: the API service (`cleanroom serve`) and the runner (`cleanroom runner`).
# Runs as the non-root user `cleanroom` (uid 10001) by default. docker-compose.yml runs the runner
# service as root because it talks to the Docker socket (the reason is written there).
#
# It starts from the sandbox image's `deps` stage (the scientific stack, compiled) and adds only the
# app's own requirements and the cleanroom distribution, so the two images share their big layer.
# Build context: the repo root (see .dockerignore). containers/build.py builds it with a local
# Debian base and a host-side wheelhouse; on a machine with a registry and the package index,
# `docker compose build` works as is.
ARG BASE_IMAGE=python:3.11-slim

# ---- deps stage: the same bytes in sandbox.Dockerfile and app.Dockerfile (build.py checks) ----
# The virtualenv with the sandbox requirements, without pip (pip runs from the base image's own
# pip wheel) or the libraries' own test suites, compiled, in one layer.
# Wheels: build.py passes HTTP_PROXY (a predefined build argument: not in the cache key nor the
# image history) pointing at its wheelhouse server on the host (`--network host`), which answers
# for the made-up host below; so no wheel is ever copied into a layer. Without that proxy the name
# does not resolve and pip installs from the package index instead.
FROM ${BASE_IMAGE} AS deps
# Settings first: each build step after the big layer costs a walk over its files on some storage drivers.
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 LANG=C.UTF-8
WORKDIR /tmp
LABEL cleanroom=1
COPY containers/requirements-sandbox.txt /opt/venv-requirements.txt
# setuptools comes in as a declared dependency of diffprivlib, which never imports it: removed, so the
# sandbox holds no packaging tools.
RUN export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 \
        PIP_TRUSTED_HOST=wheelhouse.cleanroom.invalid \
 && wheels="--no-index --find-links http://wheelhouse.cleanroom.invalid/" \
 && pip_whl="$(ls /usr/share/python-wheels/pip-*.whl /usr/local/lib/python3.11/ensurepip/_bundled/pip-*.whl \
        2>/dev/null | head -n 1)" \
 && pip="/opt/venv/bin/python ${pip_whl:?the base image has no pip wheel}/pip" \
 && python3 -m venv --without-pip /opt/venv \
 && if $pip install --no-compile $wheels -r /opt/venv-requirements.txt; then :; \
    else echo "no wheelhouse: installing from the package index" >&2 \
     && $pip install --no-compile -r /opt/venv-requirements.txt; fi \
 && site="$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
 && test "$site" = /opt/venv/lib/python3.11/site-packages \
 && rm -f /opt/venv/bin/Activate.ps1 \
 && rm -rf "$site"/setuptools "$site"/setuptools-* "$site"/pkg_resources "$site"/_distutils_hack \
        "$site"/distutils-precedence.pth \
 && find "$site" -type d -name tests -prune -exec rm -rf {} + \
 && /opt/venv/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/venv/lib \
 && rm -rf /root/.cache
# ---- end of the deps stage ----

# app-deps: the app's own requirements over deps (pip, as in deps, from the base image's wheel), the
# user and its state folders. Rebuilt only when the requirements or deps change.
FROM deps AS app-deps
# Settings here rather than in the last stage, so a source change rebuilds fewer steps.
WORKDIR /var/lib/cleanroom
EXPOSE 8000
# For the default command (the API); compose sets its own checks per service.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
CMD ["cleanroom", "serve"]
LABEL org.opencontainers.image.title="cleanroom app"
COPY containers/requirements-app.txt /opt/venv-requirements-app.txt
# The user is written directly: Debian minbase has no useradd. The state folders are owned by
# `cleanroom`, so named volumes mounted there start out writable by it.
RUN export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_TRUSTED_HOST=wheelhouse.cleanroom.invalid \
 && wheels="--no-index --find-links http://wheelhouse.cleanroom.invalid/" \
 && pip_whl="$(ls /usr/share/python-wheels/pip-*.whl /usr/local/lib/python3.11/ensurepip/_bundled/pip-*.whl \
        2>/dev/null | head -n 1)" \
 && pip="/opt/venv/bin/python ${pip_whl:?the base image has no pip wheel}/pip" \
 && site=/opt/venv/lib/python3.11/site-packages \
 && ls "$site" > /tmp/before \
 && if $pip install -q --no-compile $wheels -r /opt/venv-requirements-app.txt; then :; \
    else echo "no wheelhouse: installing from the package index" >&2 \
     && $pip install -q --no-compile -r /opt/venv-requirements-app.txt; fi \
 && $pip check \
 && ls "$site" | grep -vxFf /tmp/before | sed "s|^|$site/|" \
        | xargs -r /opt/venv/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash \
 && rm -rf /tmp/before /root/.cache \
 && echo "cleanroom:x:10001:10001:cleanroom:/var/lib/cleanroom:/usr/sbin/nologin" >> /etc/passwd \
 && echo "cleanroom:x:10001:" >> /etc/group \
 && mkdir -p /var/lib/cleanroom /var/lib/cleanroom-runner /run/cleanroom-shared \
 && chown 10001:10001 /var/lib/cleanroom /var/lib/cleanroom-runner /run/cleanroom-shared \
 && chmod 0700 /var/lib/cleanroom /var/lib/cleanroom-runner \
 && chmod 0755 /run/cleanroom-shared

# project: the cleanroom distribution built and installed over app-deps, compiled in place; its
# files (package, dist-info, console script) are collected under /staging with their final paths.
FROM app-deps AS project
# README.m[d]: copied when present (pyproject.toml names it as the readme).
COPY pyproject.toml README.m[d] /build/src/
COPY cleanroom/ /build/src/cleanroom/
RUN export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_TRUSTED_HOST=wheelhouse.cleanroom.invalid \
 && wheels="--no-index --find-links http://wheelhouse.cleanroom.invalid/" \
 && pip_whl="$(ls /usr/share/python-wheels/pip-*.whl /usr/local/lib/python3.11/ensurepip/_bundled/pip-*.whl \
        2>/dev/null | head -n 1)" \
 && pip="/opt/venv/bin/python ${pip_whl:?the base image has no pip wheel}/pip" \
 && (test -f /build/src/README.md || echo "# cleanroom" > /build/src/README.md) \
 && backend="$(/opt/venv/bin/python -c 'import tomllib; print(" ".join(tomllib.load(open( \
        "/build/src/pyproject.toml", "rb"))["build-system"]["requires"]))')" \
 && if $pip install -q --no-compile --target /tmp/backend $wheels $backend; then :; \
    else echo "no wheelhouse: installing the build backend from the package index" >&2 \
     && $pip install -q --no-compile --target /tmp/backend $backend; fi \
 && PYTHONPATH=/tmp/backend $pip install -q --no-compile --no-deps --no-build-isolation /build/src \
 && $pip check \
 && site=/opt/venv/lib/python3.11/site-packages \
 && /opt/venv/bin/python -m compileall -q --invalidation-mode unchecked-hash "$site/cleanroom" \
 && mkdir /staging && cd / \
 && cp -a --parents "$site"/cleanroom "$site"/cleanroom-*.dist-info /opt/venv/bin/cleanroom /staging/

FROM app-deps
COPY --from=project /staging/ /
USER 10001:10001
