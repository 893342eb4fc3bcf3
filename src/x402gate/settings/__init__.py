"""A gate's settings: one model that Flask config, Django settings and the gateway file share.

::

    settings = read_flask_config(app.config)     # SettingsError names every wrong key
    gate, owned = build_gate(settings)
"""

from __future__ import annotations

from .building import build_gate, build_route_table, gate_from_flask_config, gate_from_settings
from .model import GATE_FIELDS, SETTING_NAMES, GateSettings
from .reading import (
    DJANGO,
    FLASK,
    MAPPING,
    YAML,
    SettingProblem,
    SettingsError,
    Spelling,
    read_django_setting,
    read_flask_config,
    read_settings,
)

__all__ = [
    "DJANGO",
    "FLASK",
    "GATE_FIELDS",
    "MAPPING",
    "SETTING_NAMES",
    "YAML",
    "GateSettings",
    "SettingProblem",
    "SettingsError",
    "Spelling",
    "build_gate",
    "build_route_table",
    "gate_from_flask_config",
    "gate_from_settings",
    "read_django_setting",
    "read_flask_config",
    "read_settings",
]
