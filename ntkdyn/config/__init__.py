"""Configuration: the TOML schema and building an experiment from it.

* :mod:`~ntkdyn.config.schema` — typed, validated sections (frozen dataclasses),
  :func:`load_config`, :func:`config_from_dict`, :class:`ConfigError`.
* :mod:`~ntkdyn.config.experiment` — :func:`from_config`: a :class:`Config` -> data,
  partition, graph, mixing, model and algorithm (names resolved once, here), and the one
  ``describe`` of a configuration used by every command.
"""

from ntkdyn.config.schema import Config, ConfigError, config_from_dict, load_config

__all__ = ["Config", "ConfigError", "config_from_dict", "load_config"]
