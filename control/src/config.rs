//! Porter configuration: the YAML file, its validation, and defaults.
