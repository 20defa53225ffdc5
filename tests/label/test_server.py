"""``monai-cbo label``'s start-up checks that need no MONAI Label."""

from __future__ import annotations

from monai_cbo.label.server import _check_studies


def test_volumes_whose_names_the_server_cannot_serve_are_named_at_start(tmp_path, capsys):
    for name in ("case_1.nii.gz", ".hidden.nii.gz", " leading.nrrd", "x" * 130 + ".nii", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    _check_studies(tmp_path)
    err = capsys.readouterr().err
    assert "3 volume(s) cannot be served" in err and "'.hidden.nii.gz'" in err and "' leading.nrrd'" in err
    assert "case_1" not in err and "notes.txt" not in err
    (tmp_path / ".hidden.nii.gz").unlink()
    (tmp_path / " leading.nrrd").unlink()
    (tmp_path / ("x" * 130 + ".nii")).unlink()
    _check_studies(tmp_path)
    assert capsys.readouterr().err == ""


def test_links_to_volumes_outside_the_studies_folder_are_named_at_start(tmp_path, capsys):
    studies, elsewhere = tmp_path / "studies", tmp_path / "elsewhere.nii.gz"
    studies.mkdir()
    elsewhere.write_bytes(b"x")
    (studies / "inside.nii.gz").write_bytes(b"x")
    (studies / "link.nii.gz").symlink_to(elsewhere)
    _check_studies(studies)
    err = capsys.readouterr().err
    assert "1 volume(s) cannot be served, they are links to files outside the studies folder: 'link.nii.gz'" in err


def test_a_training_queued_but_not_yet_started_counts_as_running():
    """MONAI Label lists a task as SUBMITTED before a worker thread starts its process: a second train request in
    that moment is refused too; a SUBMITTED task over a minute old (its thread failed) no longer blocks."""
    from datetime import datetime, timedelta

    import pytest

    pytest.importorskip("fastapi", reason="the label extra is not installed")
    from monai_cbo.label.routes import _starting

    def ts(minutes_ago: float) -> str:
        return (datetime.today() - timedelta(minutes=minutes_ago)).strftime("%Y-%m-%d %H:%M:%S")

    assert _starting([{"status": "SUBMITTED", "start_ts": ts(0)}])
    assert not _starting([{"status": "SUBMITTED", "start_ts": ts(5)}])
    assert not _starting([{"status": "DONE", "start_ts": ts(0)}, {"status": "ERROR", "start_ts": ts(0)}])
    assert not _starting([{"status": "SUBMITTED", "start_ts": "yesterday"}, {"status": "SUBMITTED"}])
    assert not _starting([])
