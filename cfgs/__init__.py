"""Python config modules. Each defines `Config`; load one with libs.configs.load_config."""
