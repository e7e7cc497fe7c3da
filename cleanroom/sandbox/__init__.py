"""Code that runs inside sandbox containers.

Only pandas, numpy, scikit-learn, skops, pyarrow, pluggy (and opendp) are installed in the
sandbox image, so nothing here may import server-side modules (fastapi, docker, httpx, ...).
"""
