"""Read a datalist written by ``data_prep/`` and check it before any training or evaluation starts."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["load_datalist"]

FILE_KEYS = ("image", "label")


def load_datalist(path: str | Path, key: str = "training", base_dir: str | Path | None = None) -> list[dict]:
    """The ``key`` list of a datalist JSON, with ``image`` / ``label`` paths made absolute and checked.

    Paths resolve against ``base_dir``, else the datalist's ``dataset_dir``, else its folder. Other fields
    (``case`` ...) are passed through untouched (MONAI's ``load_decathlon_datalist`` would turn a value that
    names an existing folder into a path).

    Raises:
        FileNotFoundError: the datalist, or a file it names, does not exist (the message names both).
        ValueError: not JSON, no such list, or an empty list.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"datalist {path} does not exist; write one with a data_prep/ script")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        problem = "is empty (0 bytes)" if not path.stat().st_size else f"is not valid JSON: {err}"
        raise ValueError(f"datalist {path} {problem}; fix it or write it again with a data_prep/ script") from err
    items = data.get(key) if isinstance(data, dict) else None
    if not isinstance(items, list):
        found = sorted(k for k, v in data.items() if isinstance(v, list)) if isinstance(data, dict) else []
        raise ValueError(
            f"datalist {path} has no {key!r} list (its lists: {found}); choose one of them or re-run the data_prep "
            "script"
        )
    if not items:
        raise ValueError(
            f"datalist {path}: the {key!r} list is empty; add cases or re-run the data_prep script with other "
            "--val-fraction / --test-fraction"
        )
    base = Path(base_dir or data.get("dataset_dir") or path.parent)
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "image" not in item:
            raise ValueError(f"datalist {path}, {key} entry {i}: expected an object with an 'image', got {item!r}")
        entry = dict(item)
        for field in FILE_KEYS:
            if field not in entry:
                continue
            files = [base / f for f in (entry[field] if isinstance(entry[field], list) else [entry[field]])]
            missing = [str(f) for f in files if not f.exists()]
            if missing:
                raise FileNotFoundError(
                    f"datalist {path}, {key} entry {i}: {field} {missing[0]} does not exist; check dataset_dir "
                    f"(now {base}) or re-run the data_prep script"
                )
            entry[field] = [str(f) for f in files] if isinstance(entry[field], list) else str(files[0])
        out.append(entry)
    return out
