"""bundles/ship_adapter.py: shipping a bundle run's adapter, and an adapter trained on from the shipped one."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def ship(tmp_path, monkeypatch):
    """The script's module, writing into a bundle folder under tmp_path."""
    sys.path.insert(0, str(REPO / "bundles"))
    try:
        import ship_adapter
    finally:
        sys.path.remove(str(REPO / "bundles"))
    monkeypatch.setattr(ship_adapter, "ROOT", tmp_path / "bundles")
    (tmp_path / "bundles" / "demo" / "configs").mkdir(parents=True)
    (tmp_path / "bundles" / "demo" / "configs" / "metadata.json").write_text("{}", encoding="utf-8")
    datalist = {
        "split": {"seed": 0},
        "training": [{"case": "a"}, {"case": "b"}],
        "validation": [{"case": "c"}],
        "test": [{"case": "t1"}, {"case": "t2"}],
    }
    (tmp_path / "datalist.json").write_text(json.dumps(datalist), encoding="utf-8")
    return ship_adapter


def _run(root: Path, dice: float, init_sha: str | None = None) -> Path:
    """A run folder: models/best_adapter.pt (float32, optionally started from a file of SHA-256 init_sha) and the
    box-prompted and automatic evaluations of the two test cases."""
    (root / "models").mkdir(parents=True)
    metadata = {"init_adapter": {"sha256": init_sha}} if init_sha else {"epoch": 2}
    adapter = {
        "model_name": "litemedsam",
        "peft_config": {"preset": "adapter_cbo"},
        "class_prompts": {"names": ["x"]},
        "metadata": metadata,
        "state_dict": {"w": torch.full((3,), dice), "n": torch.tensor([1, 2])},
    }
    torch.save(adapter, root / "models" / "best_adapter.pt")
    for sub in ("eval", "eval/auto"):
        (root / sub).mkdir(parents=True)
        rows = [f"t{i},x,{dice + 0.01 * i + (0.05 if sub == 'eval' else 0)}" for i in (1, 2)]
        (root / sub / "metrics_per_case.csv").write_text("case,class,dice\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return root


def _log(path: Path) -> Path:
    lines = [f"SupervisedTrainer - INFO - Epoch[{e}] Complete. Time taken: 00:01:40" for e in (1, 2)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_staged_adapter_replaces_the_shipped_one_with_both_runs_recorded(ship, tmp_path):
    common = ["demo", "--datalist", str(tmp_path / "datalist.json"), "--data", "demo data", "--machine", "m"]
    first = _run(tmp_path / "first", 0.7)
    assert (
        ship.main([*common[:1], str(first), *common[1:], "--command", "train it", "--log", str(_log(tmp_path / "l"))])
        == 0
    )
    models = tmp_path / "bundles" / "demo" / "models"
    shipped = json.loads((models / "adapter.json").read_text(encoding="utf-8"))
    assert shipped["training_seconds"] == 200 and shipped["epochs"] == 2 and "stages" not in shipped
    assert shipped["test_dice"]["automatic"]["mean"] == pytest.approx(0.715)

    staged = _run(tmp_path / "staged", 0.8, init_sha=shipped["sha256"])
    stage = ["--stage", "monai-cbo bench ... --decoder-steps 9", "--stage-seconds", "61.4"]
    with pytest.raises(SystemExit):  # an existing adapter is replaced only when asked
        ship.main([*common[:1], str(staged), *common[1:], *stage])
    assert json.loads((models / "adapter.json").read_text(encoding="utf-8")) == shipped
    assert ship.main([*common[:1], str(staged), *common[1:], *stage, "--overwrite"]) == 0
    record = json.loads((models / "adapter.json").read_text(encoding="utf-8"))
    assert record["command"] == "train it" and record["epochs"] == 2  # the first run's, kept
    assert record["stages"] == [
        {"command": "monai-cbo bench ... --decoder-steps 9", "seconds": 61, "started_from_sha256": shipped["sha256"]}
    ]
    assert record["training_seconds"] == 261
    assert record["test_dice"]["automatic"]["mean"] == pytest.approx(0.815)
    assert record["test_cases"]["boxes"]["t2"]["x"] == pytest.approx(0.87)
    assert record["sha256"] == hashlib.sha256((models / "adapter.pt").read_bytes()).hexdigest() != shipped["sha256"]
    weights = torch.load(models / "adapter.pt", weights_only=True)["state_dict"]
    assert weights["w"].dtype == torch.float16 and weights["n"].dtype == torch.int64

    # a second stage on the staged file keeps the first one; --command is the first run's, not the stage's
    again = _run(tmp_path / "again", 0.9, init_sha=record["sha256"])
    with pytest.raises(SystemExit):
        ship.main([*common[:1], str(again), *common[1:], *stage, "--overwrite", "--command", "other"])
    stage2 = ["--stage", "monai-cbo bench ... again", "--stage-seconds", "9"]
    assert ship.main([*common[:1], str(again), *common[1:], *stage2, "--overwrite"]) == 0
    last = json.loads((models / "adapter.json").read_text(encoding="utf-8"))
    assert [s["command"] for s in last["stages"]] == [
        "monai-cbo bench ... --decoder-steps 9",
        "monai-cbo bench ... again",
    ]
    assert last["stages"][1]["started_from_sha256"] == record["sha256"] and last["training_seconds"] == 270
    assert last["command"] == "train it"


def test_a_stage_that_did_not_start_from_the_shipped_adapter_is_refused(ship, tmp_path, capsys):
    common = ["demo", "--datalist", str(tmp_path / "datalist.json"), "--data", "demo data"]
    stage = ["--stage", "monai-cbo bench ...", "--stage-seconds", "5", "--overwrite"]
    other = _run(tmp_path / "other", 0.8, init_sha="0" * 64)
    with pytest.raises(SystemExit):  # nothing shipped yet: nothing to train on
        ship.main([*common[:1], str(other), *common[1:], *stage])
    assert "ship the first run first" in capsys.readouterr().err
    assert ship.main([*common[:1], str(_run(tmp_path / "first", 0.7)), *common[1:], "--command", "train it"]) == 0
    models = tmp_path / "bundles" / "demo" / "models"
    before = (models / "adapter.pt").read_bytes()
    with pytest.raises(SystemExit):
        ship.main([*common[:1], str(other), *common[1:], *stage])
    err = capsys.readouterr().err
    assert "did not start from the shipped" in err and "--init-adapter" in err and "0" * 64 in err
    assert (models / "adapter.pt").read_bytes() == before
    with pytest.raises(SystemExit):  # the stage's time goes with its command
        ship.main([*common[:1], str(other), *common[1:], "--stage", "monai-cbo bench ...", "--overwrite"])
    assert "--stage-seconds" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a first run names its command
        ship.main([*common[:1], str(other), *common[1:], "--overwrite"])
    assert "--command is required" in capsys.readouterr().err
