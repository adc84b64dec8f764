"""The real recipes run the pipeline as real recipes: hub prompts, people annotating, nothing of the tiny task.

Offline: each recipe folder is parsed exactly as `rlhf pipeline --recipe` parses it, nothing is downloaded.
Without a pipeline.yaml (or with a setting left out) the pipeline would fall back to its defaults, the tiny
task's prompts and gold judge, and train a real model on the demo's arithmetic.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import RECIPES

from rlhf.stages import pipeline
from rlhf_core.errors import ConfigError, DataError

REAL = sorted(p for p in RECIPES.iterdir() if p.is_dir() and p.name != "tiny")
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")  # owner/name


def _tiny_settings(where: str, instance: Any) -> list[str]:
    """Every option of ``instance`` that names a built-in tiny set or the tiny task (its judge, rewards)."""
    found = []
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and (item.startswith("builtin:") or "rlhf.tiny" in item):
                found.append(f"{where}: {f.name}: {item}")
    return found


@pytest.mark.parametrize("algorithm", pipeline.ALGORITHMS)
@pytest.mark.parametrize("recipe", REAL, ids=lambda p: p.name)
def test_a_real_recipe_runs_the_pipeline_on_hub_prompts_with_people_and_nothing_of_the_tiny_task(
    recipe: Path, algorithm: str, tmp_path: Path
) -> None:
    argv = ["--recipe", str(recipe), "--output_dir", str(tmp_path), "--algorithm", algorithm]
    config, overrides = pipeline.parse_args(argv)
    run = pipeline.Pipeline(config, overrides)  # parses every stage's recipe, as a run does before training

    problems = _tiny_settings(f"{recipe.name}/pipeline.yaml", config)
    for stage, parsed in run.configs.items():
        for part in (parsed.model, parsed.data, parsed.training):
            problems += _tiny_settings(f"{recipe.name}/{stage}.yaml", part)
    if not HUB_ID.fullmatch(config.prompts) or Path(config.prompts).exists():
        problems.append(f"prompts: {config.prompts} is not a hub dataset id")
    if config.annotator != "human":
        problems.append(f"annotator: {config.annotator}")
    assert problems == []
    # the prompts annotated are not the ones the evaluation holds out
    assert (config.prompts, config.prompts_split) != (run.configs["ppo"].data.dataset_name, "test")


def _prompt_file(tmp_path: Path, rows: list[dict[str, Any]]) -> Path:
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_prompts_come_from_the_column_the_recipe_names(tmp_path: Path) -> None:
    rows = [{"id": 1, "question": "What is 3 plus 4?"}, {"id": 2, "question": [{"role": "user", "content": "Hi"}]}]
    config = pipeline.PipelineConfig(
        recipe=str(RECIPES / "tiny"),
        output_dir=str(tmp_path / "run"),
        prompts=str(_prompt_file(tmp_path, rows)),
        prompts_column="question",
    )
    assert pipeline.Pipeline(config)._prompts() == [row["question"] for row in rows]


def test_a_prompt_set_without_the_column_is_one_error_naming_the_row_and_the_option(tmp_path: Path) -> None:
    path = _prompt_file(tmp_path, [{"question": "What is 3 plus 4?"}])
    config = pipeline.PipelineConfig(recipe=str(RECIPES / "tiny"), output_dir=str(tmp_path / "run"), prompts=str(path))
    with pytest.raises(ConfigError, match=r"questions.jsonl: line 1: no column 'prompt' \(found \['question'\]\); "):
        pipeline.Pipeline(config)._prompts()
    config.prompts_column = "question"
    _prompt_file(tmp_path, [{"question": "What is 3 plus 4?"}, {"question": ""}])
    with pytest.raises(DataError, match=r"questions.jsonl: line 2: 'prompt'"):
        pipeline.Pipeline(config)._prompts()
