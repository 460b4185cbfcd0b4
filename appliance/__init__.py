"""rproxyd: a pre-fork reverse HTTP(S) proxy appliance."""

__version__ = "0.1.0"
