"""Model specs from the command line: ``--models a,b``, ``--setting [key.]field=value``, a file.

The option names in the messages are those of ``aop models`` and ``aop predict``, whose arguments
this parses.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import yaml
from pydantic import ValidationError

from aop.errors import AopError
from aop.segmentation.models.base import ModelSpec


def parse_model_specs(
    models: str, settings: Sequence[str] = (), config: str | os.PathLike | None = None
) -> dict[str, ModelSpec]:
    """Model specs by key from ``--models a,b``, ``--setting [key.]field=value`` and a YAML file.

    The file is an experiment file (its ``models`` are used, validated and with relative paths
    resolved) or a list (or ``models:`` list) of ``{name, settings, id}`` entries. A model's key is
    its ``id``, else its name; ``--setting`` addresses models by key.
    """
    from aop.config import ModelConfig, load_experiment, read_yaml, validation_message

    entries: list[ModelConfig] = []
    if config is not None:
        config = Path(config)
        raw = read_yaml(config)
        if isinstance(raw, dict) and ("data" in raw or "storage" in raw):
            entries = list(load_experiment(config).models)
        else:
            items = raw.get("models", raw) if isinstance(raw, dict) else raw
            if isinstance(items, dict):
                items = [{"name": k, "settings": v or {}} for k, v in items.items()]
            if not isinstance(items, list):
                raise AopError(f"{config}: expected a list of models ({{name, settings, id}})")
            for index, item in enumerate(items):
                item = item if isinstance(item, dict) else {"name": item}
                try:
                    entries.append(ModelConfig.model_validate(item))
                except ValidationError as exc:
                    raise AopError(
                        f"{config}: models.{index}.{validation_message(exc)}"
                    ) from None
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
