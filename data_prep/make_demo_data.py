"""Write the synthetic spleen demo data set (``monai_cbo.data.demo``, MSD layout) and its datalist.

No download and no real data: the volumes are generated from ``--seed``, which also seeds the split::

    python data_prep/make_demo_data.py demo_data -o demo_data/datalist.json --num-cases 6 --seed 0
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as `python data_prep/make_demo_data.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep import msd
from data_prep.common import base_parser, parse_args, run_cli, save
from monai_cbo.data.demo import write_demo_dataset


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: generate the demo cases, then write their datalist with a seeded split."""
    parser = base_parser(__doc__, "folder to write the demo data set into")
    parser.add_argument("-n", "--num-cases", type=int, default=6, help="number of synthetic cases (6)")
    args = parse_args(parser, argv)
    write_demo_dataset(args.dataset_dir, args.num_cases, args.seed, args.overwrite)
    return save(msd.build(args.dataset_dir, args), args)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
