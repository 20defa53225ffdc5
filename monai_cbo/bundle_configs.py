"""A bundle's configs from the shared base (``bundles/common/<kind>.json``) and its own values: the merge that
``bundles/build_configs.py`` writes the shipped bundles with and ``monai-cbo adapt`` writes a user bundle with.

A bundle's own values are its ``task`` (a :class:`~monai_cbo.task.TaskSpec` in config form), emitted as the
``task`` of every config that reads one, and per config (``train``, ``evaluate``, ``inference``,
``multi_gpu_train``) the values that differ from the base, merged the way MONAI merges a list of config files (a
key ``a#b#0`` replaces one nested item, any other key a whole top-level item; ``"_remove_": [keys]`` drops base
items).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

__all__ = ["KINDS", "dumps", "merge", "render"]

KINDS = ("train", "evaluate", "inference", "multi_gpu_train")
#: the configs that carry the bundle's task (the others are merged over train.json)
TASK_KINDS = ("train", "inference")
#: where a task's new top-level keys go in the written config: before this base key (the end if absent)
ANCHORS = {"train": "network_def", "inference": "device"}
WIDTH = 120


def _set_nested(config: dict, key: str, value: object, where: str) -> None:
    *parents, last = key.split("#")
    node = config
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.get(part)
        if node is None:
            raise KeyError(f"{where}: {key!r} names {part!r}, which the base config does not have")
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def merge(base: dict, overrides: dict, anchor: str | None = None, where: str = "") -> dict:
    """``base`` with ``overrides`` applied (see the module docstring); ``base`` is not modified."""
    overrides = dict(overrides)
    removed = set(overrides.pop("_remove_", []))
    unknown = sorted(removed - set(base))
    if unknown:
        raise KeyError(f"{where}: _remove_ names {unknown}, which the base config does not have")
    top = {k: v for k, v in overrides.items() if "#" not in k}
    new = {k: v for k, v in top.items() if k not in base}
    out: dict = {}
    for key, value in base.items():
        if key == anchor:
            out.update(copy.deepcopy(new))
            new = {}
        if key not in removed:
            out[key] = copy.deepcopy(top.get(key, value))
    out.update(copy.deepcopy(new))
    for key, value in overrides.items():
        if "#" in key:
            _set_nested(out, key, copy.deepcopy(value), where)
    return out


def dumps(value: object, indent: int = 0, column: int | None = None) -> str:
    """JSON with 4-space indents; a container below the top level is written on one line when it fits within
    ``WIDTH`` characters from ``column`` (where it starts on its line; default ``indent``)."""
    flat = json.dumps(value, ensure_ascii=False)
    column = indent if column is None else column
    if not isinstance(value, (dict, list)) or not value or (indent > 0 and column + len(flat) + 1 <= WIDTH):
        return flat
    pad = " " * (indent + 4)
    if isinstance(value, dict):
        body = []
        for k, v in value.items():
            key = json.dumps(k, ensure_ascii=False) + ": "
            body.append(pad + key + dumps(v, indent + 4, indent + 4 + len(key)))
        brackets = "{}"
    else:
        body, brackets = [pad + dumps(v, indent + 4) for v in value], "[]"
    return brackets[0] + "\n" + ",\n".join(body) + "\n" + " " * indent + brackets[1]


def render(common: Path, values: dict, where: str = "") -> dict[str, str]:
    """The text of each config (kind -> JSON text) of a bundle whose own values are ``values`` (``task`` and a
    section per kind), over the base configs in the folder ``common``.

    Raises:
        KeyError: ``values`` has a section that is neither the task nor a config kind, sets ``task`` inside a
            config's section, or names a base key that does not exist (the message names ``where``).
    """
    extra = sorted(set(values) - {"task", *KINDS})
    if extra:
        raise KeyError(f"{where}: sections {extra} are neither the task nor configs; use 'task' and {list(KINDS)}")
    texts = {}
    for kind in KINDS:
        base = json.loads((Path(common) / f"{kind}.json").read_text(encoding="utf-8"))
        overrides = dict(values.get(kind, {}))
        if kind in TASK_KINDS and "task" in values:
            if "task" in overrides:
                raise KeyError(f"{where}: [{kind}] sets 'task'; write the task once, in the 'task' section")
            overrides["task"] = values["task"]
        merged = merge(base, overrides, ANCHORS.get(kind), where=f"{where} [{kind}]")
        texts[kind] = dumps(merged) + "\n"
    return texts
