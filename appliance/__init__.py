"""rproxyd: a pre-fork reverse HTTP(S) proxy appliance."""

__version__ = "0.1.0"

# Before any other module of the package: the compiled or the pure-Python build (appliance/build.py).
from appliance import build as _build

_build.select()
