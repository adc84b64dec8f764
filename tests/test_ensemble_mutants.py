"""The ensemble's manifest and arithmetic at the edges the mutation run (scripts/mutation.py) looks at.

Every refusal of a bad manifest, whole; the default ``uwo_coef``; the scales written and read back.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlhf import ensemble
from rlhf_core.errors import ConfigError


def _members(folder: Path, *scales: tuple[float, float]) -> list[ensemble.Member]:
    listed = []
    for i, (mean, std) in enumerate(scales):
        (folder / f"member-{i}").mkdir()
        listed.append(ensemble.Member(str(folder / f"member-{i}"), mean, std))
    return listed


def test_the_manifest_records_each_members_folder_and_scale(tmp_path: Path) -> None:
    listed = _members(tmp_path, (0.25, 2.0), (-1.0, 0.5))
    path = ensemble.write_manifest(tmp_path, listed)
    assert path == tmp_path / ensemble.MANIFEST
    assert (
        path.read_text()
        == json.dumps(
            {
                "members": [
                    {"path": "member-0", "mean": 0.25, "std": 2.0},
                    {"path": "member-1", "mean": -1.0, "std": 0.5},
                ]
            },
            indent=2,
        )
        + "\n"
    )
    assert ensemble.members(tmp_path) == listed
    # a manifest written by hand with integer scales reads as floats
    path.write_text(json.dumps({"members": [{"path": "member-0", "mean": 1, "std": 3}]}))
    (member,) = ensemble.members(tmp_path)
    assert member == ensemble.Member(str(tmp_path / "member-0"), 1.0, 3.0) and isinstance(member.std, float)


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ({"members": []}, "lists no members"),
        (
            {"members": [{"path": "member-0", "mean": 0.0, "std": 0.0}]},
            "member {member} has scale std 0.0; it must be > 0",
        ),
        (
            {"members": [{"path": "member-0", "mean": 0.0, "std": -1.0}]},
            "member {member} has scale std -1.0; it must be > 0",
        ),
        (
            {"members": [{"path": "member-0", "mean": 0.0, "std": "nan"}]},
            "member {member} has scale std nan; it must be > 0",
        ),
        ({"members": [{"path": "gone", "mean": 0.0, "std": 1.0}]}, "member folder {gone} is missing"),
        ({"members": [{"path": "member-0", "mean": 0.0}]}, "not an ensemble manifest ('std')"),
        (
            {"members": [{"path": "member-0", "mean": "x", "std": 1.0}]},
            "not an ensemble manifest (could not convert string to float: 'x')",
        ),
        ({"members": [None]}, "not an ensemble manifest ('NoneType' object is not subscriptable)"),
        ([], "not an ensemble manifest (list indices must be integers or slices, not str)"),
    ],
)
def test_a_bad_manifest_is_one_error_naming_the_file_and_the_problem(
    tmp_path: Path, manifest: object, message: str
) -> None:
    (tmp_path / "member-0").mkdir()
    path = tmp_path / ensemble.MANIFEST
    path.write_text(json.dumps(manifest))
    with pytest.raises(ConfigError) as error:
        ensemble.members(tmp_path)
    assert str(error.value) == f"{path}: " + message.format(member=tmp_path / "member-0", gone=tmp_path / "gone")


def test_uwo_discounts_by_the_variance_once_by_default() -> None:
    scores = torch.tensor([[1.0, 0.0], [3.0, 0.0]])  # variances 1 and 0
    assert ensemble.aggregate(scores, "uwo").tolist() == [1.0, 0.0]  # mean 2 - 1 x 1; mean 0 - 0
    assert ensemble.aggregate(scores, "uwo", 0.0).tolist() == ensemble.aggregate(scores, "mean").tolist()
    with pytest.raises(ValueError, match=r"^reward_aggregation: unknown 'max' \(use one of mean, uwo, wco\)$"):
        ensemble.aggregate(scores, "max")
