"""Training curves: a history table drawn as a PNG; a missing or empty table is an InputError."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from qaclims import cli, training_curves
from qaclims.errors import InputError
from qaclims.history import write_history


def _ritc_rows(steps: int, per_epoch: int) -> list[dict[str, float]]:
    rng = np.random.default_rng(0)
    return [
        {
            "step": t,
            "epoch": (t - 1) // per_epoch + 1,
            "lr": 3.5e-4 * (1 - (t - 1) / steps) ** 0.9,
            "lr_group_1": 3.5e-3 * (1 - (t - 1) / steps) ** 0.9,
            "frc": 3.0 - t / steps + 0.2 * rng.standard_normal(),
            "brc": 2.0 + 0.1 * rng.standard_normal(),
            "reg": 0.1 * rng.random(),
            "loss": 10.0 * rng.random(),
        }
        for t in range(1, steps + 1)
    ]


def test_running_mean_is_the_trailing_mean_of_finite_values():
    values = np.array([1.0, 2.0, np.nan, 4.0, 8.0, np.inf, 5.0])
    expected = []
    for i in range(len(values)):
        window = values[max(0, i - 2) : i + 1]
        finite = window[np.isfinite(window)]
        expected.append(finite.mean() if len(finite) else np.nan)
    np.testing.assert_allclose(training_curves.running_mean(values, 3), expected)
    assert np.isnan(training_curves.running_mean(np.array([np.nan, 1.0]), 1)[0])


def test_ritc_history_is_drawn_with_each_term_smoothed(tmp_path):
    rows = _ritc_rows(steps=120, per_epoch=40)
    write_history(rows, tmp_path / "ritc.parquet")
    out = tmp_path / "curves" / "ritc.png"
    summary = training_curves.run(history=tmp_path / "ritc.parquet", out=out, title="RITC")
    assert summary["steps"] == 120 and summary["window"] == 120 // 50
    for term in ("frc", "brc", "reg", "loss"):  # the last running mean of each panel
        assert summary[term] == pytest.approx(np.mean([r[term] for r in rows[-2:]]))
    with Image.open(out) as png:
        assert png.format == "PNG"
        assert png.height > png.width  # five stacked panels: four terms and the LR
    assert sorted(p.name for p in out.parent.iterdir()) == ["ritc.png"]


def test_short_history_is_drawn_raw(tmp_path):
    rows = [
        {"step": 1, "epoch": 1, "lr": 0.1, "loss": 0.7},
        {"step": 2, "epoch": 1, "lr": 0.05, "loss": 0.6},
    ]
    write_history(rows, tmp_path / "cam.parquet")
    summary = training_curves.run(
        history=tmp_path / "cam.parquet", out=tmp_path / "c.png", title="CAM"
    )
    assert summary == {"steps": 2.0, "window": 1.0, "loss": 0.6}
    assert (tmp_path / "c.png").stat().st_size > 0


def test_missing_empty_or_foreign_table_is_an_input_error(tmp_path):
    out = tmp_path / "out.png"
    with pytest.raises(InputError, match="training history not found"):
        training_curves.run(history=tmp_path / "absent.parquet", out=out, title="x")
    write_history([], tmp_path / "empty.parquet")
    with pytest.raises(InputError, match=r"empty\.parquet: the training history has no steps"):
        training_curves.run(history=tmp_path / "empty.parquet", out=out, title="x")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(InputError, match="not a readable Parquet file"):
        training_curves.run(history=tmp_path / "junk.parquet", out=out, title="x")
    rows = [
        {"step": 2, "epoch": 1, "lr": 0.1, "loss": 1.0},
        {"step": 1, "epoch": 1, "lr": 0.1, "loss": 1.0},
    ]
    write_history(rows, tmp_path / "shuffled.parquet")
    with pytest.raises(InputError, match="steps are not increasing"):
        training_curves.run(history=tmp_path / "shuffled.parquet", out=out, title="x")
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".png")]  # nor temp files


def test_cli_reports_a_missing_table_with_exit_code_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(
            ["training_curves", "--history", str(tmp_path / "absent.parquet"),
             "--out", str(tmp_path / "o.png"), "--title", "IRN"]
        )  # fmt: skip
    assert stop.value.code == 2
    assert "training history not found" in capsys.readouterr().err
