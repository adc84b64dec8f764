"""Preference datasets from the stored answers, in the formats TRL and ``rlhf reward`` load directly.

A pipeline of pure formatters over :class:`feedback.records.Item` lists, then writers:

* ``pairs`` - ``prompt`` / ``chosen`` / ``rejected`` (+ ``margin`` where known), conversational, for
  reward modelling and DPO. From a ranking, every ordered pair (InstructGPT's K*(K-1)/2; ties give
  none); from thumbs, every (up, down) pair of the same prompt. An answer with both uses its
  ranking (it is the finer judgement). ``margin`` is the rank gap scaled to (0, 1] (1 = best vs
  worst); thumbs carry no margin, so their pairs have ``margin: null`` (the reward stage reads that
  as 0).
* ``kto`` - ``prompt`` / ``completion`` / ``label`` (bool), the unpaired form KTO wants: from thumbs,
  or derived from a ranking (:func:`ranking_thumbs`: a candidate ranked above the middle of the
  ranking is desirable, one below it undesirable, one in the middle or tied with it says nothing), so
  the same rankings train a reward model, DPO and KTO.
* ``sft`` - ``messages`` (the prompt and the annotator's corrected response as the assistant turn).

Every row also carries its prompt's ``batch``, ``selected_by`` and ``selection_score`` (None outside
the rounds of iterated RLHF, :meth:`feedback.store.Store.assign_batch`), so a training run can weigh,
filter or compare rounds and selectors without going back to the store; the stages that read the
rows ignore columns they do not use. The report counts rows per batch.

Aggregation across annotators: ``all`` keeps every annotator's judgement as its own row (repeated
and even conflicting rows stay: they carry the annotators' uncertainty); ``majority`` keeps, per
candidate pair (or per candidate for KTO), the judgement more than half of the annotators who
judged it gave, once. Nothing is dropped silently: the report counts what each step kept.

Splits are by prompt (no prompt is in both), from a hash of the prompt text and the seed, so they
are deterministic and stable: adding annotations later never moves a prompt to the other split.

Writers: ``train.jsonl``/``test.jsonl``, ``train.parquet``/``test.parquet``, and a
``datasets.save_to_disk`` folder ``hf/``; ``rlhf reward --dataset_name DIR`` reads the JSONL files,
``datasets.load_from_disk(DIR / "hf")`` the rest of the ecosystem. Optionally pushed to the hub.

The files hold annotators' names and judgements: an export folder the export creates is 0700, and
every file and folder it writes is made 0600 / 0700 (whatever the umask), as the SQLite database is.

An export writes a complete folder or nothing (:func:`write_folder`): it is built in a temporary
folder next to the target and renamed into place, so a training run never reads a half-written
export nor one mixed with an earlier export's files (an earlier ``test.jsonl`` beside a new
``train.jsonl`` would put the same prompts in both). The target must be new or empty; with
``overwrite`` an earlier export folder (one holding ``export.json``) is replaced as a whole.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import logging
import os
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from feedback.records import Answer, Item, batch_order
from feedback.store import Store
from rlhf_core.errors import ConfigError
from rlhf_core.rows import Source, validate

logger = logging.getLogger(__name__)

FORMATS = ("pairs", "kto", "sft")
AGGREGATIONS = ("majority", "all")
WRITERS = ("jsonl", "parquet", "disk")
SPLITS = ("train", "test")
Row = dict[str, Any]

# ----------------------------------------------------------------------------------------------
# Judgements of one answer


def preferences(answer: Answer) -> dict[tuple[int, int], float | None]:
    """(winner, loser) -> margin for every pair this answer orders; ties and unrated pairs give nothing."""
    if answer.ranks:
        worst = max(answer.ranks.values())
        return {
            (a, b): (answer.ranks[b] - answer.ranks[a]) / (worst - 1)
            for a, b in itertools.permutations(sorted(answer.ranks), 2)
            if answer.ranks[a] < answer.ranks[b]
        }
    ups = sorted(c for c, up in answer.thumbs.items() if up)
    downs = sorted(c for c, up in answer.thumbs.items() if not up)
    return {(a, b): None for a in ups for b in downs}


def _judges(answer: Answer, a: int, b: int) -> bool:
    """Whether an answer judged the pair at all (a tie is a judgement; an unrated candidate is not)."""
    source = answer.ranks or answer.thumbs
    return a in source and b in source


# ----------------------------------------------------------------------------------------------
# Formatters: items -> rows (each row keeps its prompt under "_prompt" for splitting)

PROVENANCE = ("batch", "selected_by", "selection_score")  # where a row's prompt came from, in every format
UNBATCHED = "unbatched"  # the report's key for rows of prompts outside the rounds


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _row(item: Item, **columns: Any) -> Row:
    """A row of ``item``: its prompt under ``_prompt`` (for splitting), ``columns``, then its :data:`PROVENANCE`."""
    return {"_prompt": item.messages, **columns, **{name: getattr(item, name) for name in PROVENANCE}}


def _pair_row(item: Item, winner: int, loser: int, margin: float | None) -> Row:
    return _row(
        item,
        prompt=item.messages,
        chosen=_assistant(item.candidate(winner).text),
        rejected=_assistant(item.candidate(loser).text),
        margin=None if margin is None else round(margin, 4),
    )


def _mean(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def pair_rows(items: Sequence[Item], aggregation: str = "majority") -> list[Row]:
    """Preference pairs from rankings and thumbs (see the module docstring for the rules)."""
    rows: list[Row] = []
    for item in items:
        judged = [preferences(answer) for answer in item.answers]
        if aggregation == "all":
            rows += [_pair_row(item, a, b, m) for prefs in judged for (a, b), m in sorted(prefs.items())]
            continue
        ids = sorted(c.id for c in item.candidates)
        for a, b in itertools.combinations(ids, 2):
            judges = sum(_judges(answer, a, b) for answer in item.answers)
            for winner, loser in ((a, b), (b, a)):
                votes = [prefs[(winner, loser)] for prefs in judged if (winner, loser) in prefs]
                if votes and len(votes) > judges / 2:
                    rows.append(_pair_row(item, winner, loser, _mean(votes)))
    return rows


def ranking_thumbs(ranks: dict[int, int]) -> dict[int, bool]:
    """Thumbs from a ranking (1 = best): above the middle of the ranks given is up, below it is down.

    With 4 candidates ranked 1-4, the top two are desirable and the bottom two undesirable; with 3,
    the middle one gives no label; ties share a rank, and a ranking whose candidates all tie gives none.
    """
    if not ranks:
        return {}
    middle = (min(ranks.values()) + max(ranks.values())) / 2
    return {c: rank < middle for c, rank in ranks.items() if rank != middle}


def kto_rows(items: Sequence[Item], aggregation: str = "majority") -> list[Row]:
    """Unpaired (prompt, completion, label) rows from thumbs, or from rankings (:func:`ranking_thumbs`)."""
    rows: list[Row] = []
    for item in items:
        labels: dict[int, list[bool]] = defaultdict(list)
        for answer in item.answers:
            thumbs = answer.thumbs or ranking_thumbs(answer.ranks)  # an answer with both: its thumbs
            for candidate_id, up in sorted(thumbs.items()):
                labels[candidate_id].append(up)
        for candidate_id, votes in sorted(labels.items()):
            if aggregation == "all":
                kept = votes
            else:
                ups = sum(votes)
                kept = [True] if ups > len(votes) / 2 else [False] if len(votes) - ups > len(votes) / 2 else []
            completion = _assistant(item.candidate(candidate_id).text)
            rows += [_row(item, prompt=item.messages, completion=completion, label=label) for label in kept]
    return rows


def sft_rows(items: Sequence[Item], aggregation: str = "majority") -> list[Row]:
    """Demonstrations from corrected responses (identical corrections of a prompt kept once)."""
    del aggregation  # every distinct correction is a demonstration; there is nothing to vote on
    rows: list[Row] = []
    for item in items:
        seen: set[str] = set()
        for answer in item.answers:
            text = answer.correction
            if text is None or text in seen:
                continue
            seen.add(text)
            rows.append(_row(item, messages=[*item.messages, *_assistant(text)]))
    return rows


FORMATTERS: dict[str, Callable[[Sequence[Item], str], list[Row]]] = {
    "pairs": pair_rows,
    "kto": kto_rows,
    "sft": sft_rows,
}
VALIDATION_KIND = {"pairs": "preference", "kto": "unpaired", "sft": "sft"}  # the checks of the stages that read them


# ----------------------------------------------------------------------------------------------
# Split


def in_test_split(prompt: Any, test_fraction: float, seed: int) -> bool:
    """A prompt's split from a hash of its text and the seed: deterministic and stable."""
    key = json.dumps(prompt, sort_keys=True, ensure_ascii=False)
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < test_fraction


def split_rows(rows: Sequence[Row], test_fraction: float, seed: int) -> dict[str, list[Row]]:
    """Rows into train and test by prompt; the internal ``_prompt`` key is removed."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    splits: dict[str, list[Row]] = {name: [] for name in SPLITS}
    for row in rows:
        name = "test" if in_test_split(row["_prompt"], test_fraction, seed) else "train"
        splits[name].append({k: v for k, v in row.items() if k != "_prompt"})
    return splits


# ----------------------------------------------------------------------------------------------
# Writers


def _datasets(splits: dict[str, list[Row]]) -> Any:
    from datasets import Dataset, DatasetDict

    return DatasetDict({name: Dataset.from_list(rows) for name, rows in splits.items() if rows})


def write_jsonl(splits: dict[str, list[Row]], out_dir: Path) -> list[Path]:
    written = []
    for name, rows in splits.items():
        if rows:
            path = out_dir / f"{name}.jsonl"
            path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
            written.append(path)
    return written


def write_parquet(splits: dict[str, list[Row]], out_dir: Path) -> list[Path]:
    written = []
    for name, dataset in _datasets(splits).items():
        path = out_dir / f"{name}.parquet"
        dataset.to_parquet(str(path))
        written.append(path)
    return written


def write_disk(splits: dict[str, list[Row]], out_dir: Path) -> list[Path]:
    path = out_dir / "hf"
    _datasets(splits).save_to_disk(str(path))
    return [path]


WRITER_FUNCTIONS: dict[str, Callable[[dict[str, list[Row]], Path], list[Path]]] = {
    "jsonl": write_jsonl,
    "parquet": write_parquet,
    "disk": write_disk,
}


def hub_token() -> str | None:
    """A hub token from the environment or ``huggingface-cli login``, if one is configured."""
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if token:
        return token
    from huggingface_hub import get_token

    return get_token()


# ----------------------------------------------------------------------------------------------
# The whole export


@dataclass
class ExportReport:
    """What an export wrote: rows per split, and per batch over all splits (keyed by round, then
    :data:`UNBATCHED`), so a round that produced no training signal shows."""

    format: str
    aggregation: str
    out_dir: str
    items: int
    answers: int
    rows: dict[str, int]
    rows_per_batch: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    pushed_to: str | None = None
    created_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))


def build(
    items: Sequence[Item], format: str, aggregation: str, test_fraction: float, seed: int
) -> dict[str, list[Row]]:
    """Rows of every split for an export, validated as the consuming stage will validate them."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    splits = split_rows(FORMATTERS[format](items, aggregation), test_fraction, seed)
    if format in VALIDATION_KIND:
        for name, rows in splits.items():
            if rows:
                validate(rows, VALIDATION_KIND[format], Source(f"{format} export [{name}]"))
    return splits


def rows_per_batch(splits: dict[str, list[Row]]) -> dict[str, int]:
    """Rows of every split counted by batch, in round order, rows outside the rounds last (:data:`UNBATCHED`)."""
    counts = Counter(row["batch"] for rows in splits.values() for row in rows)
    ordered = sorted(counts, key=batch_order)
    return {UNBATCHED if batch is None else str(batch): counts[batch] for batch in ordered}


def _private(paths: Iterable[Path]) -> None:
    """Owner-only permissions on written files (0600) and folders (0700), recursively."""
    for path in paths:
        if path.is_dir():
            path.chmod(0o700)
            _private(path.iterdir())
        else:
            path.chmod(0o600)


def check_target(out: Path, overwrite: bool) -> None:
    """Refuse an export folder that would mix runs or cannot be written, before any work: :class:`ConfigError`."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"export folder {out}: exists and is not a folder; name a new or empty folder")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if entries and not overwrite:
        raise ConfigError(
            f"export folder {out}: not empty ({len(entries)} entries, e.g. {entries[0]!r}); an export never "
            "mixes its files with others: name a new or empty folder, or replace the whole folder with --overwrite"
        )
    if entries and "export.json" not in entries:
        raise ConfigError(
            f"export folder {out}: holds no export.json, so it is not an earlier export; --overwrite replaces "
            "only an export folder: name a new or empty folder"
        )
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"export folder {out}: cannot write in {parent}; name a folder you can write")


def write_folder(out: Path, write: Callable[[Path], None], overwrite: bool) -> None:
    """Run ``write`` on a new temporary folder next to ``out``, then move that folder into place as ``out``.

    Next to it, so the move is a rename on one file system: the folder appears whole or not at all.
    An empty ``out`` is replaced by the rename itself; an earlier export (``overwrite``) is moved
    aside first and deleted after (a crash between the two renames leaves it as ``.<name>.old-*``
    beside a missing ``out``, never a mixture). A failure anywhere removes the temporary folder.
    """
    check_target(out, overwrite)
    try:
        out.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))  # 0700
    except OSError as error:
        raise ConfigError(f"export folder {out}: cannot create it ({error.strerror})") from None
    old = None
    try:
        write(building)
        if out.is_dir() and any(out.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            out.rename(old / out.name)
        building.rename(out)  # onto a missing or empty folder: atomic
    except BaseException as error:
        shutil.rmtree(building, ignore_errors=True)
        if old is not None and not out.exists():
            (old / out.name).rename(out)  # the earlier export goes back where it was
        if isinstance(error, OSError):
            raise ConfigError(f"export folder {out}: could not write it ({error.strerror}); nothing changed") from None
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def export(
    store: Store | Sequence[Item],
    format: str,
    out_dir: str | Path,
    *,
    aggregation: str = "majority",
    test_fraction: float = 0.1,
    seed: int = 0,
    writers: Sequence[str] = WRITERS,
    push_to_hub: str | None = None,
    overwrite: bool = False,
) -> ExportReport:
    """Write the ``format`` dataset of a store (or of records) as the folder ``out_dir``; returns what was written.

    The folder is complete or not written at all (:func:`write_folder`): ``out_dir`` must be new or
    empty, or an earlier export folder with ``overwrite`` (replaced as a whole). An export with no
    rows writes only ``export.json``, which says so. ``push_to_hub`` (a repo id) also uploads the
    splits as a private dataset; it needs a hub token (``HF_TOKEN`` or ``huggingface-cli login``) and
    fails before writing anything without one; a failed upload leaves the folder unwritten.
    """
    unknown = sorted(set(writers) - set(WRITERS))
    if unknown:
        raise ValueError(f"unknown writer(s) {unknown}; known: {list(WRITERS)}")
    out = Path(out_dir)
    check_target(out, overwrite)
    token = hub_token() if push_to_hub else None
    if push_to_hub and not token:
        raise ValueError("push_to_hub needs a hub token: set HF_TOKEN or run `huggingface-cli login`")
    items = store if isinstance(store, Sequence) else store.records()
    splits = build(items, format, aggregation, test_fraction, seed)
    report = ExportReport(
        format=format,
        aggregation=aggregation,
        out_dir=str(out),
        items=len(items),
        answers=sum(len(item.answers) for item in items),
        rows={name: len(rows) for name, rows in splits.items()},
        rows_per_batch=rows_per_batch(splits),
    )
    if not any(splits.values()):
        logger.warning("%s export: no rows (no answers of the kind this format needs yet)", format)

    def write(folder: Path) -> None:
        written = (
            [p for name in writers for p in WRITER_FUNCTIONS[name](splits, folder)] if any(splits.values()) else []
        )
        report.files = [str(out / p.relative_to(folder)) for p in written]
        if push_to_hub and written:
            _datasets(splits).push_to_hub(push_to_hub, private=True, token=token)
            report.pushed_to = push_to_hub
        (folder / "export.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
        _private([folder / "export.json", *written])

    write_folder(out, write, overwrite)
    return report
