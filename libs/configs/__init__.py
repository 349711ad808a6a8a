"""Config loading: `--cfg path/to/file.py` -> a validated config with derived values.

Every field, its default and its meaning: libs/configs/defaults.py (`Defaults`, the
class a config starts from)."""
from libs.configs.config_loader import (
    FLIP_DIRECTIONS,
    ConfigError,
    LoadedConfig,
    load_config,
    load_config_from_flags,
    parse_overrides,
)
from libs.configs.defaults import Defaults

__all__ = ["FLIP_DIRECTIONS", "ConfigError", "Defaults", "LoadedConfig", "load_config",
           "load_config_from_flags", "parse_overrides"]
