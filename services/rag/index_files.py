"""A replica's search indexes on disk: where they live, which generation they hold, opening them.

``index_dir`` holds the tantivy index (``lexical/``, committed at every generation the replica
applies), the usearch graph (``dense.usearch``, saved after a quiet spell and on close) and
``manifest.json``: the store generation each of them reflects and the embedding model of the
vectors. A start opens them and applies only the changes committed since; an index that is
missing, unreadable, for another model or too far behind the store's change log is rebuilt
from the store (and the reason logged).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import structlog

from services.rag.dense_index import DenseIndex
from services.rag.lexical_index import LexicalIndex

_log = structlog.get_logger(__name__)

MANIFEST = "manifest.json"
_LEXICAL = "lexical"
_DENSE = "dense.usearch"
# Bumped whenever the indexes' layout or the lexical schema changes: older ones are rebuilt.
_FORMAT = 3


@dataclass(frozen=True, slots=True)
class DenseModel:
    """Which embedding model the dense index holds vectors of; saved indexes must match it."""

    name: str
    dimensions: int


@dataclass(frozen=True, slots=True)
class Manifest:
    # The generation the lexical index was last committed at (it may hold a little more:
    # re-applying a change is harmless).
    generation: int
    dense_model: str | None = None
    # The generation the saved dense graph reflects (None: no graph saved).
    dense_generation: int | None = None
    format: int = _FORMAT


@dataclass(slots=True)
class OpenedIndexes:
    lexical: LexicalIndex
    dense: DenseIndex | None
    # The generation both indexes reflect; None when they are new and must be built from the store.
    generation: int | None
    reason: str = ""


def read_manifest(index_dir: Path) -> Manifest | None:
    try:
        raw = json.loads((index_dir / MANIFEST).read_text())
        manifest = Manifest(**raw)
    except (OSError, ValueError, TypeError):
        return None
    return manifest if manifest.format == _FORMAT else None


def write_manifest(index_dir: Path, manifest: Manifest) -> None:
    """Replace the manifest atomically (a temp file, then a rename)."""
    staging = index_dir / (MANIFEST + ".tmp")
    staging.write_text(json.dumps(asdict(manifest)))
    os.replace(staging, index_dir / MANIFEST)


def open_indexes(index_dir: Path, dense_model: DenseModel | None) -> OpenedIndexes:
    """The saved indexes, or new empty ones (``generation`` None) with the reason they were not usable."""
    manifest = read_manifest(index_dir)
    reason = ""
    if manifest is None:
        reason = "no readable manifest"
    elif dense_model is not None and manifest.dense_model != dense_model.name:
        reason = f"the saved vectors are of model {manifest.dense_model!r}, not {dense_model.name!r}"
    elif dense_model is not None and manifest.dense_generation != manifest.generation:
        reason = "the vector index was not saved at the lexical index's generation (stopped without closing)"
    if manifest is not None and not reason:
        try:
            lexical = LexicalIndex.open(index_dir / _LEXICAL)
            dense = DenseIndex.load(index_dir / _DENSE, dense_model.dimensions) if dense_model is not None else None
        except (OSError, ValueError, RuntimeError) as error:
            reason = f"unreadable: {error}"
        else:
            return OpenedIndexes(lexical, dense, manifest.generation)
    return OpenedIndexes(*_fresh(index_dir, dense_model), None, reason)


def fresh_indexes(index_dir: Path, dense_model: DenseModel | None, reason: str) -> OpenedIndexes:
    return OpenedIndexes(*_fresh(index_dir, dense_model), None, reason)


def _fresh(index_dir: Path, dense_model: DenseModel | None) -> tuple[LexicalIndex, DenseIndex | None]:
    shutil.rmtree(index_dir, ignore_errors=True)
    index_dir.mkdir(parents=True)
    lexical = LexicalIndex.create(index_dir / _LEXICAL)
    return lexical, DenseIndex.empty(dense_model.dimensions) if dense_model is not None else None


def save_dense(index_dir: Path, dense: DenseIndex) -> None:
    staging = index_dir / (_DENSE + ".tmp")
    dense.save(staging)
    os.replace(staging, index_dir / _DENSE)
