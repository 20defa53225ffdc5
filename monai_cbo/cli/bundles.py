"""``monai-cbo bundles``: the shipped bundles, their classes, adapters and test Dice."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bundles",
        help="list the shipped bundles: classes, trained adapter and its test Dice",
        description="The bundles of this checkout (bundles/), with what their adapter was trained on and scores.",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bundles import list_bundles

    infos = list_bundles()
    if not infos:
        print("no bundles found: monai-cbo bundles needs a source checkout (pip install -e .)", file=sys.stderr)
        return 1
    for info in infos:
        print(f"{info.name}: {info.metadata.get('task', '')}")
        print(f"  classes: {', '.join(info.class_names) or '-'}")
        if info.adapter is None:
            reason = info.metadata.get("no_adapter_reason")
            print(f"  adapter: none shipped{' (' + reason + ')' if reason else ''}; train it with its train.json")
            continue
        record = info.record
        print(f"  adapter: {info.adapter} ({record.get('trained_on', 'training data not recorded')})")
        if record.get("note"):
            print(f"  note: {record['note']}")
        for mode, dice in (record.get("test_dice") or {}).items():
            scores = ", ".join(f"{k} {v:.3f}" for k, v in dice.items())
            print(f"  test Dice ({mode}): {scores}")
    return 0
