"""Model specs from the command line: ``--models a,b``, ``--setting [key.]field=value``, a file.

The option names in the messages are those of ``aop models`` and ``aop predict``, whose arguments
this parses.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, ValidationError

from aop.config import StrictModel, read_yaml, resolve_input
from aop.errors import AopError, validation_message
from aop.segmentation.models.base import ModelSpec


class ModelConfig(StrictModel):
    """One candidate segmentation model of a file: registry name, settings, a unique id."""

    name: Annotated[str, Field(min_length=1)]
    settings: dict[str, Any] = Field(default_factory=dict)
    id: str | None = None

    @property
    def key(self) -> str:
        """The model's name in the search space and results (``id`` if given, else ``name``)."""
        return self.id or self.name

    def resolve_weights(self, base: Path) -> None:
        """Resolve a relative ``model`` setting (a weights path) against the file's folder.

        A registered name (e.g. StarDist's ``2D_versatile_fluo``), a URI or a path found nowhere
        stays as it is.
        """
        value = self.settings.get("model")
        if isinstance(value, str) and "://" not in value and not Path(value).is_absolute():
            resolved = resolve_input(Path(value), base)
            if resolved.exists():
                self.settings["model"] = str(resolved)


def parse_model_specs(
    models: str, settings: Sequence[str] = (), config: str | os.PathLike | None = None
) -> dict[str, ModelSpec]:
    """Model specs by key from ``--models a,b``, ``--setting [key.]field=value`` and a YAML file.

    The file is an experiment file (its ``models`` are used) or a list (or ``models:`` list) of
    ``{name, settings, id}`` entries; relative weight paths resolve as in an experiment file. A
    model's key is its ``id``, else its name; ``--setting`` addresses models by key.
    """
    entries: list[ModelConfig] = []
    if config is not None:
        config = Path(config)
        raw = read_yaml(config)
        items = raw.get("models", raw) if isinstance(raw, dict) else raw
        if isinstance(items, dict):
            items = [{"name": k, "settings": v or {}} for k, v in items.items()]
        if not isinstance(items, list):
            raise AopError(f"{config}: expected a list of models ({{name, settings, id}})")
        for index, item in enumerate(items):
            item = item if isinstance(item, dict) else {"name": item}
            try:
                entry = ModelConfig.model_validate(item)
            except ValidationError as exc:
                raise AopError(f"{config}: models.{index}.{validation_message(exc)}") from None
            entry.resolve_weights(config.resolve().parent)
            entries.append(entry)
    specs: dict[str, ModelSpec] = {}
    for entry in entries:
        if entry.key in specs:
            raise AopError(f"{config}: model key {entry.key!r} appears twice: give each an 'id'")
        specs[entry.key] = ModelSpec(name=entry.name, settings=dict(entry.settings))
    for name in [m.strip() for m in models.split(",") if m.strip()]:
        specs.setdefault(name, ModelSpec(name=name))
    if not specs:
        raise AopError("--models: name at least one model (e.g. --models classical,unet3d)")
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise AopError(f"--setting {item!r}: expected [model.]key=value")
        model, dot, field = key.rpartition(".")
        if not dot:
            if len(specs) != 1:
                raise AopError(f"--setting {item!r}: name the model as model.{key}=value")
            model = next(iter(specs))
        if model not in specs:
            raise AopError(f"--setting {item!r}: model {model!r} is not among the models")
        specs[model].settings[field] = yaml.safe_load(value)
    return specs
