"""What defines a bench (:class:`BenchConfig`, saved as ``bench.json``) and the checks its settings pass before
anything runs: a resumed ``bench.json`` must hold the same budget (:func:`_check_config`), an ``init_adapter``
must fit the bench (:func:`check_init_adapter`)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..inferers.automatic import AutoConfig
from ..inferers.volume import Preprocess
from ..peft import adapter_class_prompts, read_adapter
from ..peft.config import ABLATION_PRESETS, PRESETS, PeftConfig
from ..peft.state import _config_mismatch
from ..precision import PRECISIONS
from ..transforms.intensity import DEFAULT_CT_WINDOW
from ..utils import check_option

__all__ = ["DEFAULT_PRESETS", "FORMER_NAMES", "BenchConfig", "check_init_adapter", "decoder_lr"]


DEFAULT_PRESETS = ABLATION_PRESETS
#: names a bench.json written before 2026-12-06 used, and the names the bundles, the CLI and BenchConfig use now
FORMER_NAMES = {"batch": "batch_size", "lr": "learning_rate", "jitter": "box_jitter", "min_pixels": "min_foreground"}


def _current_names(saved: dict) -> dict:
    return {FORMER_NAMES.get(k, k): v for k, v in saved.items()}


#: config fields that may change between an interrupted bench and its resumption
_RESUMABLE = {"presets", "seeds", "device", "cache_mib", "out"}


@dataclass
class BenchConfig:
    """Everything that defines a bench; saved as ``bench.json``. See ``monai-cbo bench --help``."""

    datalist: str
    out: str
    dataset_dir: str | None = None
    train_split: str = "training"
    eval_split: str = "test"
    max_train_cases: int | None = None
    max_eval_cases: int | None = None
    presets: list[str] = field(default_factory=lambda: list(DEFAULT_PRESETS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    model: str = "litemedsam"
    checkpoint: str | None = None
    rank: int | None = None
    steps: int = 60
    batch_size: int = 2
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    box_jitter: int = 5
    walk_boxes: float = 0.0
    walk_prompt: bool = False
    min_foreground: int = 4
    classes: list[int] | None = None
    modality: str = "auto"
    ct_window: list[float] = field(default_factory=lambda: list(DEFAULT_CT_WINDOW))
    channels: list[int] | None = None
    view: str = "axial"
    device: str | None = None
    amp: bool = True
    precision: str = "auto"
    cache_mib: float = 6144.0
    auto_share: float = 0.0
    background_ratio: float = 0.1
    decoder_steps: int = 0
    decoder_lr: float | None = None
    init_adapter: str | None = None
    auto_z_smooth: float = 0.0

    def __post_init__(self) -> None:
        for preset in self.presets:
            check_option("preset", preset, PRESETS)
        check_option("precision", self.precision, PRECISIONS)
        if not self.presets or not self.seeds:
            raise ValueError("give at least one preset and one seed")
        if len(set(self.presets)) != len(self.presets) or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"presets {self.presets} and seeds {self.seeds} must not repeat")
        if self.init_adapter is not None and (len(self.presets) != 1 or self.presets[0] == "freeze"):
            raise ValueError(
                f"init_adapter {self.init_adapter} holds one preset's weights: bench exactly that preset "
                f"(--presets <its preset>), not {','.join(self.presets)}"
            )
        if self.steps < (0 if self.init_adapter else 1) or self.batch_size < 1:
            raise ValueError(
                f"steps ({self.steps}) and batch_size ({self.batch_size}) must be >= 1 (steps may be 0 with an "
                "init_adapter: its decoder stage only, or the adapter scored as it is)"
            )
        if self.decoder_steps < 0 or (self.decoder_lr is not None and self.decoder_lr <= 0):
            raise ValueError(
                f"decoder_steps ({self.decoder_steps}) must be >= 0 and decoder_lr ({self.decoder_lr}) > 0; "
                "0 decoder steps: no decoder stage"
            )
        if not (0 <= self.auto_share <= 1 and 0 <= self.background_ratio <= 1 and 0 <= self.walk_boxes <= 1):
            raise ValueError(
                f"auto_share ({self.auto_share}), background_ratio ({self.background_ratio}) and walk_boxes "
                f"({self.walk_boxes}) are shares in [0, 1]"
            )
        if self.walk_prompt and not self.walk_boxes:
            raise ValueError("walk_prompt tells walk boxes apart: it needs walk_boxes > 0")
        Preprocess(self.modality, tuple(self.ct_window), self.channels, self.view)  # validates
        AutoConfig(z_smooth=self.auto_z_smooth)  # validates

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(self.modality, tuple(self.ct_window), self.channels, self.view)

    @classmethod
    def from_saved(cls, saved: dict) -> BenchConfig:
        """The config of a ``bench.json`` (keys that are not fields, such as the command, are left out); a bench
        saved before the settings took the bundles' names (:data:`FORMER_NAMES`) reads as well."""
        return cls(**{k: v for k, v in _current_names(saved).items() if k in cls.__dataclass_fields__})

    def runs(self) -> list[tuple[str, int]]:
        """(preset, seed) in execution order: seed-major, so a partial bench already compares every preset.
        ``freeze`` trains nothing and draws nothing at random, so it runs once (seed of the first run)."""
        order = []
        for seed in self.seeds:
            for preset in self.presets:
                if preset == "freeze" and seed != self.seeds[0]:
                    continue
                order.append((preset, seed))
        return order

    def budget(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in _RESUMABLE}


def check_init_adapter(config: BenchConfig) -> dict:
    """Read ``config.init_adapter`` and check that it can start a run of ``config``: the same model, the PEFT
    config of ``config``'s preset and rank, and class prompts exactly when the bench trains automatic steps.
    Runs before any data is loaded; returns the read checkpoint. Raises ``ValueError`` naming the file and the fix."""
    path = config.init_adapter
    payload = read_adapter(path)
    preset = config.presets[0]
    if payload["model_name"] != config.model:
        raise ValueError(
            f"--init-adapter {path} was trained on model {payload['model_name']!r}, the bench builds "
            f"{config.model!r}: pass --model {payload['model_name']}"
        )
    saved = PeftConfig.from_dict(payload["peft_config"])
    diff = _config_mismatch(saved, PeftConfig.from_preset(preset, rank=config.rank))
    if diff:
        raise ValueError(
            f"--init-adapter {path} is a {saved.preset} adapter that does not match preset {preset}"
            f"{'' if config.rank is None else f' rank {config.rank}'} ({'; '.join(diff)}): pass "
            f"--presets {saved.preset}"
            + (
                f" --rank {saved.rank}"
                if config.rank is not None or saved.rank != PeftConfig.from_preset(saved.preset).rank
                else ""
            )
        )
    names = (adapter_class_prompts(payload) or {}).get("names")
    if names and not config.auto_share:
        raise ValueError(
            f"--init-adapter {path} holds class prompts ({', '.join(names)}): keep training them with --auto-share "
            "(its automatic mode is scored too); without them the bench builds no class prompts to load them into"
        )
    if config.auto_share and not names:
        raise ValueError(
            f"--init-adapter {path} has no class prompts, so it cannot start automatic steps: pass --auto-share 0, "
            "or start from an adapter trained with automatic steps"
        )
    return payload


def decoder_lr(config: BenchConfig) -> float:
    """The decoder stage's peak LR: ``config.decoder_lr``, else a third of ``config.learning_rate`` (the measured
    setting)."""
    return config.decoder_lr if config.decoder_lr is not None else config.learning_rate / 3


def _check_config(config: BenchConfig, path: Path) -> None:
    saved = _current_names(json.loads(path.read_text(encoding="utf-8")))
    budget = config.budget()

    def same(key: str, old: object, new: object) -> bool:
        if key in ("datalist", "dataset_dir", "init_adapter") and old and new:  # relative or absolute, the same file
            return Path(str(old)).resolve() == Path(str(new)).resolve()
        return old == new

    defaults = {f.name: f.default for f in dataclasses.fields(BenchConfig) if f.default is not dataclasses.MISSING}
    # a field added after the bench was made counts as its default there
    diff = {
        k: (saved.get(k, defaults.get(k)), v)
        for k, v in budget.items()
        if not same(k, saved.get(k, defaults.get(k)), v)
    }
    if diff:
        details = "; ".join(f"{k}: {old!r} there, {new!r} now" for k, (old, new) in diff.items())
        raise ValueError(
            f"{path} was made with another budget or data ({details}); resume it with the same "
            "options, or give a new --out"
        )
