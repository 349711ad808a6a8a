"""Config loading: `--cfg path/to/file.py` -> a validated config with derived values."""
from libs.configs.config_loader import (
                                        FLIP_DIRECTIONS,
                                        ConfigError,
                                        finalize,
                                        load_config,
                                        load_config_from_flags,
                                        parse_overrides,
)

__all__ = ["FLIP_DIRECTIONS", "ConfigError", "finalize", "load_config",
           "load_config_from_flags", "parse_overrides"]
