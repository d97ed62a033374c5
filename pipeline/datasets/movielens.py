"""MovieLens-100k, read from an installed wheel that ships it (never vendored here).

The data's licence forbids redistribution, so streamrec reads the copy that the
``recbole`` wheel ships under ``recbole/dataset_example/ml-100k/``:

* ``ml-100k.inter``: ``user_id  item_id  rating  timestamp`` (tab-separated, header row);
* ``ml-100k.item``: ``item_id  movie_title  release_year  class`` (titles).

Install it without its (heavy, dated) dependency tree: ``pip install --no-deps recbole``.
``STREAMREC_ML100K_DIR`` may point at any directory holding those two files instead.

Every rating becomes one ``rate`` event (value = the rating, ts = the rating's
timestamp in ms); each user's events are sorted by time (ties keep file order).
Item ids are the MovieLens ids as strings ("242"); titles are
"Title (year)".
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from pipeline.datasets import DatasetUnavailable, SequenceDataset
from pipeline.recommender import HistoryEvent

__all__ = ["find_ml100k", "load_ml100k", "INSTALL_HINT"]

INSTALL_HINT = (
    "MovieLens-100k is read from the `recbole` wheel, which is not installed here. "
    "Install it with `.venv/bin/pip install --no-deps recbole` (only its data files are used), "
    "or set STREAMREC_ML100K_DIR to a directory holding ml-100k.inter and ml-100k.item."
)


def find_ml100k(packages: tuple[str, ...] = ("recbole",), env: str = "STREAMREC_ML100K_DIR") -> Path:
    """The directory holding ``ml-100k.inter`` / ``ml-100k.item``; DatasetUnavailable if none."""
    override = os.environ.get(env)
    if override:
        d = Path(override)
        if not (d / "ml-100k.inter").is_file():
            raise DatasetUnavailable(
                f"{env}={override} does not contain ml-100k.inter; point it at a directory holding "
                "ml-100k.inter and ml-100k.item, or unset it to read the copy in the `recbole` wheel "
                "(`.venv/bin/pip install --no-deps recbole`)."
            )
        return d
    for pkg in packages:
        try:
            spec = importlib.util.find_spec(pkg)  # does not import the package (recbole's imports are heavy)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            continue
        for root in spec.submodule_search_locations:
            d = Path(root) / "dataset_example" / "ml-100k"
            if (d / "ml-100k.inter").is_file():
                return d
    raise DatasetUnavailable(INSTALL_HINT)


def load_ml100k(path: str | Path | None = None, min_events: int = 3, **_: object) -> SequenceDataset:
    d = Path(path) if path else find_ml100k()
    inter = d / "ml-100k.inter"
    if not inter.is_file():
        raise DatasetUnavailable(f"{inter} is missing. " + INSTALL_HINT)
    per_user: dict[str, list[tuple[int, int, str, float]]] = {}
    with inter.open(encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        cols = [h.split(":")[0] for h in header]
        try:
            iu, ii, ir, it = (cols.index(c) for c in ("user_id", "item_id", "rating", "timestamp"))
        except ValueError:
            raise DatasetUnavailable(f"{inter}: unexpected header {header}") from None
        for n, line in enumerate(f):
            parts = line.rstrip("\n").split("\t")
            if len(parts) < len(cols):
                continue
            per_user.setdefault(parts[iu], []).append((int(float(parts[it])), n, parts[ii], float(parts[ir])))
    items_seen: set[str] = set()
    user_ids: list[str] = []
    sequences: list[list[HistoryEvent]] = []
    for u in sorted(per_user, key=lambda x: int(x) if x.isdigit() else x):
        rows = sorted(per_user[u])
        if len(rows) < min_events:
            continue
        user_ids.append(u)
        sequences.append([HistoryEvent(item, "rate", ts * 1000, rating) for ts, _, item, rating in rows])
        items_seen.update(r[2] for r in rows)
    items = sorted(items_seen, key=lambda x: int(x) if x.isdigit() else x)
    titles: dict[str, str] | None = None
    item_file = d / "ml-100k.item"
    if item_file.is_file():
        titles = {}
        with item_file.open(encoding="utf-8", errors="replace") as f:
            header = [h.split(":")[0] for h in f.readline().rstrip("\n").split("\t")]
            i_id = header.index("item_id")
            i_title = header.index("movie_title") if "movie_title" in header else None
            i_year = header.index("release_year") if "release_year" in header else None
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if i_title is None or len(parts) <= i_title or parts[i_id] not in items_seen:
                    continue
                year = parts[i_year] if i_year is not None and len(parts) > i_year and parts[i_year] else ""
                titles[parts[i_id]] = f"{parts[i_title]} ({year})" if year else parts[i_title]
    return SequenceDataset(
        name="ml-100k",
        items=items,
        user_ids=user_ids,
        sequences=sequences,
        spec={"name": "ml-100k", "min_events": min_events},
        titles=titles,
        oracle=None,
    )
