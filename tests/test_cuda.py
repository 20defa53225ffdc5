"""CUDA checks (``pytest -m cuda``): skipped without a GPU; ``monai-cbo gpu-check`` runs them on a lent one.

* AMP (bf16 and fp16) forward / backward / optimiser step of every PEFT preset on LiteMedSAM and on the ViT-B
  shape (random weights: ``build_model("vit_b")`` without a checkpoint).
* CUDA inference against CPU inference of LiteMedSAM on a real hippocampus volume. Stated tolerances: in fp32
  (TF32 off) every probability within 1e-3 of the CPU's and each class's mask agreeing with the CPU's at Dice
  >= 0.995; under AMP (fp16) the mean probability difference <= 5e-3 and mask agreement >= 0.97. The measured
  differences are recorded in the JUnit file (``record_property``), so the GPU check reports them.
* The spleen bundle: one training epoch on CUDA with AMP, then its resume to epoch 2.
* A 1-GPU ``torchrun`` of the multi-GPU config with NCCL, past its first iteration.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_runs import run_bundle
from realdata import shared_data

from monai_cbo.inferers import Preprocess, SliceWiseInferer, load_volume, prepare_volume
from monai_cbo.inferers.prompts import prompts_from_label
from monai_cbo.losses import PromptDiceBCELoss
from monai_cbo.networks import build_model
from monai_cbo.peft import PeftConfig, apply_peft
from monai_cbo.peft.config import PRESETS
from monai_cbo.training import build_optimizer

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (monai-cbo gpu-check runs these)"),
]

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "spleen_ct_cbo" / "configs"
MODELS = ("litemedsam", "vit_b")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.fixture(scope="module")
def base_models() -> dict:
    """Base models on the CPU, built once each (LiteMedSAM pretrained, ViT-B random) and copied per test."""
    return {}


def _batch(size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """2 random images, 2 boxes each, box-shaped targets: ``[2, 3, S, S]``, ``[2, 2, 4]``, ``[2, 2, S, S]``."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, size, size, generator=g)
    boxes = torch.tensor([[[0.1, 0.1, 0.5, 0.6], [0.4, 0.3, 0.9, 0.8]]] * 2) * (size - 1)
    target = torch.zeros(2, 2, size, size)
    for p, (x0, y0, x1, y1) in enumerate(boxes[0].long().tolist()):
        target[:, p, y0 : y1 + 1, x0 : x1 + 1] = 1.0
    return images.to(device), boxes.to(device), target.to(device)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("model_name", MODELS)
def test_amp_forward_backward_and_step_of_every_preset(base_models, model_name, preset, dtype):
    device = torch.device("cuda")
    if model_name not in base_models:
        base_models[model_name] = build_model(model_name)  # vit_b: no checkpoint, random weights
    model = apply_peft(copy.deepcopy(base_models[model_name]), PeftConfig.from_preset(preset)).to(device).train()
    images, boxes, target = _batch(model.img_size, device)
    with torch.autocast("cuda", dtype=DTYPES[dtype]):
        out = model(images, boxes=boxes)
        loss = PromptDiceBCELoss()(out, target)
    assert out.masks.shape == (2, 2, 1, model.img_size, model.img_size)
    assert torch.isfinite(loss), f"{model_name} {preset} {dtype}: loss {loss.item()}"
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not trainable:
        assert preset == "freeze"
        return
    optimizer = build_optimizer(model, 1e-4)
    # a moderate first scale: the default 2**16 may overflow at step 1 and skip it, which is GradScaler working
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10, enabled=dtype == "fp16")
    before = {n: p.detach().clone() for n, p in trainable.items()}
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    grads = {n: p.grad for n, p in trainable.items() if p.grad is not None}
    assert grads and all(torch.isfinite(g).all() for g in grads.values()), "non-finite gradients"
    assert any(g.abs().sum() > 0 for g in grads.values()), "every gradient is zero"
    scaler.step(optimizer)
    scaler.update()
    changed = [n for n, p in trainable.items() if not torch.equal(p.detach(), before[n])]
    assert changed, "the optimiser step changed no parameter"
    assert all(torch.isfinite(p).all() for p in trainable.values())


@contextlib.contextmanager
def _no_tf32() -> Iterator[None]:
    """Full fp32 matrix products and convolutions (PyTorch lets convolutions use TF32 by default)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _agreement(a: np.ndarray, b: np.ndarray, cls: int) -> float:
    x, y = a == cls, b == cls
    return 2 * float((x & y).sum()) / max(1, int(x.sum() + y.sum()))


def test_cuda_inference_matches_cpu_on_a_hippocampus_volume(record_property):
    images = shared_data("Task04_Hippocampus", "imagesTr")
    image = sorted(images.glob("hippocampus_*.nii.gz"))[0]
    label = shared_data("Task04_Hippocampus", "labelsTr", image.name)
    volume, geometry = prepare_volume(load_volume(image), Preprocess(modality="mri"))
    gt = geometry.to_sliced(load_volume(label)[0].numpy().round().astype(int))
    prompts = prompts_from_label(gt)
    shape = tuple(volume.shape[1:])
    model = build_model("litemedsam")
    cpu_inferer = SliceWiseInferer(copy.deepcopy(model), device="cpu")
    cpu = cpu_inferer.predict(volume, prompts)
    cpu_map = cpu_inferer.label_map(cpu, shape)
    figures = {}
    for name, amp in (("fp32", False), ("amp", True)):
        inferer = SliceWiseInferer(copy.deepcopy(model), device="cuda", amp=amp)
        with _no_tf32() if not amp else contextlib.nullcontext():
            results = inferer.predict(volume, prompts)
        diffs = torch.cat([(results[c][z].prob - cpu[c][z].prob).abs().flatten() for c in cpu for z in cpu[c]])
        cuda_map = inferer.label_map(results, shape)
        figures[name] = {
            "max": float(diffs.max()),
            "mean": float(diffs.mean()),
            "agreement": min(_agreement(cuda_map, cpu_map, c) for c in cpu),
        }
        for key, value in figures[name].items():
            record_property(
                f"{name}_{'mask_dice_vs_cpu' if key == 'agreement' else key + '_abs_prob_diff'}", round(value, 6)
            )
    record_property("case", image.name)
    assert figures["fp32"]["max"] <= 1e-3 and figures["fp32"]["agreement"] >= 0.995, figures
    assert figures["amp"]["mean"] <= 5e-3 and figures["amp"]["agreement"] >= 0.97, figures


# ---- the bundles on CUDA -----------------------------------------------------------------------------------------


def _bundle(args: list[str], out: Path, data: Path, launcher: list[str] | None = None, **env: str) -> str:
    options = ["--dataset_dir", str(data), "--output_dir", str(out), "--slices_per_volume", "2", "--val_interval", "1"]
    return run_bundle(args, options, launcher, env=env, timeout=300)


def _state(out: Path) -> dict:
    return torch.load(out / "models" / "training_state.pt", weights_only=True, map_location="cpu")


def test_bundle_epoch_with_amp_on_cuda_and_its_resume(demo_data, tmp_path):
    out = tmp_path / "run"
    train = [
        "training",
        "--config_file",
        str(CONFIGS / "train.json"),
        "--device",
        "$torch.device('cuda')",
        "--amp",
        "true",
    ]
    _bundle([*train, "--max_epochs", "1"], out, demo_data)
    first = _state(out)["trainer"]
    log = _bundle([*train, "--max_epochs", "2", "--resume", "true"], out, demo_data)
    assert "resumed from" in log and "at epoch 1" in log
    state = _state(out)
    assert state["trainer"]["epoch"] == 2 and state["trainer"]["iteration"] == 2 * first["iteration"]
    assert state["optimizer"]["state"]  # Adam moments carried on
    assert all(torch.isfinite(v).all() for v in state["network"].values() if v.is_floating_point())
    assert (out / "models" / "best_adapter.pt").is_file()


def test_one_gpu_torchrun_with_nccl(demo_data, tmp_path):
    out = tmp_path / "ddp"
    configs = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'multi_gpu_train.json'}']"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    log = _bundle(
        ["training", "--config_file", configs, "--max_epochs", "1", "--batch_size", "1"],
        out,
        demo_data,
        launcher,
        NCCL_DEBUG="INFO",
    )
    assert "NCCL INFO" in log  # the process group is NCCL's, not gloo's
    assert _state(out)["trainer"]["iteration"] == 2  # past the first iteration (DDP's unused-parameter check)
    assert (out / "models" / "best_adapter.pt").is_file()
