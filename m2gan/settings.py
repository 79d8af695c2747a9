"""Groups of the model's settings that one part of it needs (the objective's, the pipeline's)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

T = TypeVar("T", bound="SettingsGroup")


@dataclass(frozen=True)
class SettingsGroup:
    """A frozen dataclass whose fields are named as ``M2GAN``'s constructor arguments."""

    @classmethod
    def from_settings(cls: type[T], settings: Mapping[str, Any]) -> T:
        """This group's fields picked out of a model's settings (its hyperparameters)."""
        return cls(**{field.name: settings[field.name] for field in fields(cls)})
