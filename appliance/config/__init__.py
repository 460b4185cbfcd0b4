"""Configuration: typed schema, TOML loading with conf.d merging, validation."""

from appliance.config.loader import DEFAULT_PATH, ConfigError, load
from appliance.config.schema import Config

__all__ = ["DEFAULT_PATH", "Config", "ConfigError", "load"]
