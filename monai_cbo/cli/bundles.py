"""``monai-cbo bundles``: the shipped bundles, their classes, adapters and test Dice."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bundles",
        help="list the shipped bundles (or the bundle folders given): classes, trained adapter and its Dice",
        description="The bundles of this checkout (bundles/), or the bundle folders given (such as those written "
        "by monai-cbo adapt), with what their adapter was trained on and scores.",
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="bundle folders to describe instead of the shipped ones")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bundles import is_bundle_path, list_bundles, load_bundle

    infos = [load_bundle(path if is_bundle_path(path) else f"./{path}") for path in args.paths] or list_bundles()
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
        for kind in ("test_dice", "validation_dice"):
            for mode, dice in (record.get(kind) or {}).items():
                scores = ", ".join(f"{k} {v:.3f}" for k, v in dice.items())
                print(f"  {kind.replace('_', ' ').replace('dice', 'Dice')} ({mode}): {scores}")
    return 0
