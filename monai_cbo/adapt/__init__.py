"""``monai-cbo adapt``: a few labelled volumes become a user bundle (an adapter, its task and its record) within a
budget of minutes.

:func:`adapt` checks and loads every volume first (:mod:`.inputs`: any problem, in any case, stops it before
training, with the case and the fix), holds back what it validates on, trains with the recipe
(:mod:`.train`: the bundles' trainer and step, the bench's batches and slice cache), keeps the best validated
weights and writes the bundle (:mod:`.bundle`). An interrupted run (Ctrl-C, SIGTERM, a lost machine) continues
with ``--resume``.

The :class:`Recipe` is the one every training of an adapter starts from: ``adapt``'s, the bundles' ``train.json``
(its ``recipe`` section, where a bundle sets its own values) and the label server's train task (which runs
``adapt --bundle``: :func:`from_bundle`).
"""

from .bundle import bundle_recipe, from_bundle
from .inputs import InputProblems, LabelledCase, parse_class_names
from .run import adapt
from .train import Budget, Recipe

__all__ = [
    "Budget",
    "InputProblems",
    "LabelledCase",
    "Recipe",
    "adapt",
    "bundle_recipe",
    "from_bundle",
    "parse_class_names",
]
