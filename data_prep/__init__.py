"""Dataset scripts: one per public dataset layout, each writing a MONAI datalist (see ``common.py``).

Run a script directly (``python data_prep/msd.py --help``) or import it (``from data_prep import msd``).
"""
