"""Vector geometry: cosines of the selected vectors, principal angles between the Power
Steering and MELBO subspaces, the selected vector's band, and the report section, on
hand-built vectors whose answers are known."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from harness.engine.methods import SteeringVectors
from harness.engine.vectors_io import save_vector_sets
from harness.evaluation.cells import UNSTEERED
from harness.evaluation.geometry import (
    band_of_selected,
    behavior_geometry,
    cosine_table,
    geometry_report,
    orthonormal_basis,
    principal_angles,
    selected_direction,
)
from harness.evaluation.report import build_blocks, render_markdown, write_report
from harness.evaluation.run_dir import VECTORS_FILE, write_manifest, write_results
from harness.testing.results_frames import cell_rows, results_frame, successes_on

D = 6
ANGLE = math.radians(30.0)


def basis(*indices: int) -> torch.Tensor:
    """Standard basis rows ``e_i`` of R^D."""
    return torch.eye(D, dtype=torch.float64)[list(indices)]


def rotated(first: int, towards: int, angle: float) -> torch.Tensor:
    """``cos(angle) e_first + sin(angle) e_towards``."""
    return math.cos(angle) * basis(first)[0] + math.sin(angle) * basis(towards)[0]


# --- principal angles ---------------------------------------------------------------------


def test_orthogonal_subspaces_are_at_90_degrees():
    angles = principal_angles(basis(0, 1), basis(2, 3))
    assert angles.tolist() == pytest.approx([90.0, 90.0])


def test_a_subspace_is_at_0_degrees_from_itself_in_any_basis():
    turned = torch.stack([rotated(0, 1, 0.7), rotated(1, 0, -0.7)])  # same plane
    assert principal_angles(basis(0, 1), turned).tolist() == pytest.approx([0.0, 0.0], abs=1e-6)


def test_a_known_rotation_gives_its_angles_smallest_first():
    second = torch.stack([rotated(0, 4, math.radians(50.0)), rotated(1, 5, ANGLE)])
    assert principal_angles(basis(0, 1), second).tolist() == pytest.approx([30.0, 50.0])


def test_a_tiny_angle_is_not_lost_to_arccos():
    tiny = 1e-9  # cos(tiny) rounds to 1.0 in float64, so arccos would say 0
    angles = principal_angles(basis(0, 1), torch.stack([rotated(0, 3, tiny), basis(1)[0]]))
    assert angles.tolist() == pytest.approx([0.0, math.degrees(tiny)], rel=1e-6, abs=1e-15)
    assert float(angles.max()) > 0.0


def test_subspaces_of_different_sizes_have_as_many_angles_as_the_smaller():
    angles = principal_angles(basis(0, 1, 2), torch.stack([rotated(0, 4, ANGLE)]))
    assert angles.tolist() == pytest.approx([30.0])
    assert principal_angles(torch.stack([rotated(0, 4, ANGLE)]), basis(0, 1, 2)).tolist() == (
        pytest.approx([30.0])
    )


def test_rows_that_are_not_orthogonal_are_orthonormalised_with_their_span_kept():
    rows = torch.nn.functional.normalize(torch.tensor([[1.0, 0, 0, 0, 0, 0], [1.0, 1, 0, 0, 0, 0]]))
    orthonormal, changed = orthonormal_basis(rows)
    assert changed
    assert torch.allclose(orthonormal @ orthonormal.T, torch.eye(2, dtype=torch.float64))
    assert principal_angles(orthonormal, basis(0, 1)).tolist() == pytest.approx([0, 0], abs=1e-6)
    assert orthonormal_basis(basis(2, 3)) == (pytest.approx(basis(2, 3)), False)


# --- cosines and bands ----------------------------------------------------------------------


def test_the_selected_direction_carries_its_sign():
    rows = basis(0, 1)
    assert selected_direction(rows, {"selected": {"vector": 1, "sign": -1}}).tolist() == (
        (-basis(1)[0]).tolist()
    )
    assert selected_direction(rows, {"selected": None}) is None


def test_cosine_table_with_a_reference_column():
    table = cosine_table({"power": -basis(0)[0], "melbo": rotated(0, 3, ANGLE)}, basis(0)[0])
    assert list(table.columns) == ["difference of means", "power", "melbo"]
    assert table.loc["power", "difference of means"] == pytest.approx(-1.0)
    assert table.loc["melbo", "difference of means"] == pytest.approx(math.cos(ANGLE))
    assert table.loc["power", "melbo"] == pytest.approx(-math.cos(ANGLE))
    assert table.loc["melbo", "melbo"] == pytest.approx(1.0)
    assert "difference of means" not in cosine_table({"power": basis(0)[0]}).columns


def test_band_of_the_selected_vector():
    bands = [[0], [1, 2]]
    assert band_of_selected({"bands": bands, "selected": {"vector": 2}}) == [1, 2]
    assert band_of_selected({"bands": bands, "selected": {"vector": 0}}) == [0]
    assert band_of_selected({"bands": None, "selected": {"vector": 0}}) is None
    assert band_of_selected({"bands": bands, "selected": None}) is None


# --- one behavior ---------------------------------------------------------------------------


def as_result(method: str, rows: torch.Tensor) -> SteeringVectors:
    return SteeringVectors(
        method=method,
        vectors=rows.float(),
        values=torch.ones(len(rows)),
        source=1,
        target=3,
        seed=0,
    )


SELECTIONS = {
    "b/caa": {"selected": {"vector": 0, "sign": 1, "scale": 1.0}},
    "b/power": {"bands": [[0], [1, 2]], "selected": {"vector": 0, "sign": -1, "scale": 2.0}},
    "b/melbo": {"selected": {"vector": 0, "sign": 1, "scale": 1.0}},
}


def hand_built_sets() -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """Behavior ``b``: difference of means along e0; Power Steering e0, e1, e2 (band v1-v2),
    selected -v0; MELBO e0 turned 30 degrees towards e5, and e1, selected +v0; metadata as
    a run writes it."""
    vectors = {
        "b/caa": basis(0),
        "b/power": basis(0, 1, 2),
        "b/melbo": torch.stack([rotated(0, 5, ANGLE), basis(1)[0]]),
    }
    metadata = {
        name: {**as_result(name.split("/")[1], rows).metadata(), **SELECTIONS[name]}
        for name, rows in vectors.items()
    }
    return vectors, metadata


def test_behavior_geometry_on_hand_built_vectors():
    vectors, metadata = hand_built_sets()
    geometry = behavior_geometry("b", vectors, metadata)
    cosines = geometry.cosines
    assert list(cosines.index) == ["power", "melbo", "caa"]  # report order
    assert cosines.loc["power", "difference of means"] == pytest.approx(-1.0)
    assert cosines.loc["melbo", "difference of means"] == pytest.approx(math.cos(ANGLE))
    assert cosines.loc["caa", "difference of means"] == pytest.approx(1.0)
    assert cosines.loc["power", "melbo"] == pytest.approx(-math.cos(ANGLE))
    # span(e0, e1, e2) against span(e0 turned 30 degrees out of it, e1).
    assert geometry.angles.tolist() == pytest.approx([0.0, 30.0], abs=1e-6)
    assert geometry.orthonormalised == () and geometry.subspace_sizes == (3, 2)
    assert geometry.power_vector == 0 and geometry.power_band == [0]
    assert behavior_geometry("other", vectors, metadata) is None


def test_the_report_paragraph_says_what_it_measured():
    vectors, metadata = hand_built_sets()
    table, text = geometry_report("b", vectors, metadata)
    assert table.to_dict("records")[0] == {
        "method": "power",
        "difference of means": "-1.00",
        "power": "+1.00",
        "melbo": "-0.87",
        "caa": "-1.00",
    }
    assert "with the difference-of-means direction" in text
    assert "Power Steering (3 vectors) and MELBO (2 vectors) subspaces: 0.0°, 30.0°." in text
    assert "v0 is alone in its band" in text
    metadata["b/power"] = {**metadata["b/power"], "selected": {"vector": 2, "sign": 1}}
    assert "came from the band v1–v2 (2 vectors" in geometry_report("b", vectors, metadata)[1]


def test_without_caa_or_melbo_the_geometry_shows_what_it_can():
    vectors, metadata = hand_built_sets()
    del vectors["b/caa"], vectors["b/melbo"]
    table, text = geometry_report("b", vectors, metadata)
    assert list(table.columns) == ["method", "power"]
    assert "no difference-of-means direction" in text
    assert "No principal angles" in text and "alone in its band" in text


def test_melbo_rows_that_are_not_orthogonal_are_orthonormalised_and_said_so():
    vectors, metadata = hand_built_sets()
    vectors["b/melbo"] = torch.nn.functional.normalize(
        torch.stack([rotated(0, 5, ANGLE), rotated(0, 5, ANGLE) + basis(1)[0]])
    )  # orthogonal=False: independent restarts; the span is still (e0 turned, e1)
    geometry = behavior_geometry("b", vectors, metadata)
    assert geometry.orthonormalised == ("melbo",)
    assert geometry.angles.tolist() == pytest.approx([0.0, 30.0], abs=1e-5)
    assert "melbo rows orthonormalised first" in geometry_report("b", vectors, metadata)[1]


# --- the report -----------------------------------------------------------------------------


def hand_built_results() -> pd.DataFrame:
    n = 6
    return results_frame(
        cell_rows(UNSTEERED, 0.0, [False] * n, vector=-1, sign=0, split="test"),
        cell_rows("power", 2.0, successes_on(range(4), n), split="test", selected_scale=2.0),
        cell_rows("melbo", 1.0, successes_on(range(2), n), split="test", selected_scale=1.0),
    )


def test_each_behavior_section_has_its_vector_geometry():
    vectors, metadata = hand_built_sets()
    markdown = render_markdown(build_blocks(hand_built_results(), metadata, {}, vectors=vectors))
    lines = markdown.splitlines()
    assert "### Vector geometry" in lines
    assert lines.index("### Vector geometry") < lines.index(
        "### Example generations at selected scales"
    )
    assert "| power | -1.00 | +1.00 | -0.87 | -1.00 |" in lines
    assert "subspaces: 0.0°, 30.0°." in markdown
    without = render_markdown(build_blocks(hand_built_results(), metadata, {}))
    assert "Vector geometry" not in without  # no vectors given: no section


def test_write_report_reads_the_geometry_from_the_run_directory(tmp_path):
    vectors, metadata = hand_built_sets()
    sets = {name: as_result(meta["method"], vectors[name]) for name, meta in metadata.items()}
    save_vector_sets(tmp_path / VECTORS_FILE, sets, **SELECTIONS)
    write_results(tmp_path, hand_built_results())
    write_manifest(tmp_path, {"model": {"name": "m"}})
    markdown = write_report(tmp_path).read_text()
    assert "### Vector geometry" in markdown
    assert "| melbo | +0.87 | -0.87 | +1.00 | +0.87 |" in markdown
    assert "subspaces: 0.0°, 30.0°." in markdown and "v0 is alone in its band" in markdown
    assert "Vector geometry" in (tmp_path / "report.html").read_text()
