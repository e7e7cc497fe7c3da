# The sandbox image: where the compute phase (untrusted plugin code) and the release phase run.
# It holds the scientific stack and cleanroom's sandbox modules, nothing else: no server code,
# no pip, no compilers. The runner starts it as `python -I -m cleanroom.sandbox.<phase>` with a
# read-only root filesystem, so all bytecode is compiled here.
#
# Build context: the repo root (see .dockerignore). On a machine with a registry and the package
# index, `docker build -f containers/sandbox.Dockerfile .` works as is. containers/build.py builds
# the `deps` stage once as its own image (cleanroom-deps:<hash>), on a local Debian base, with the
# wheels served from its host-side wheelhouse; this image and the app image then both start from
# that one layer, so the big scientific stack is installed, compiled and stored once.
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

# Only the sandbox runtime files, as the `cleanroom` package, compiled in place.
FROM deps
COPY cleanroom/__init__.py cleanroom/hookspecs.py cleanroom/plugin_helpers.py \
     /opt/venv/lib/python3.11/site-packages/cleanroom/
COPY cleanroom/sandbox/ /opt/venv/lib/python3.11/site-packages/cleanroom/sandbox/
RUN python -m compileall -q --invalidation-mode unchecked-hash /opt/venv/lib/python3.11/site-packages/cleanroom
USER 65534:65534
