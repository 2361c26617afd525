"""The lab's sales dataset: a small SQLite file the analyst agent queries.

    python -m lab06_agent_tools.dataset [PATH] [--seed N]   (default: $LAB06_DATABASE or .lab/lab06_sales.sqlite)

The rows come from a seeded random generator: 2026's sales of four products in four regions. With
the default seed every student and every notebook run has the same data (the numbers in the
course LLM's script). The check writes the file itself, before the worker starts, with a seed of
its own that no student process sees: the data differ from run to run, so a tool that answers
without reading the file cannot match them. worker.py creates the file when it is missing;
nothing else in the lab writes to it (query_database must not).
"""

import argparse
import os
import random
import sqlite3
import uuid
from datetime import date, timedelta
from pathlib import Path

from .models import database_path

SEED = 64
ROWS = 480
REGIONS = ("North", "South", "East", "West")
PRODUCTS = {"Widget": 19.99, "Gadget": 49.50, "Gizmo": 120.00, "Doohickey": 7.25}
# Each region sells a little differently, so the answers are not a tie.
REGION_WEIGHT = {"North": 1.0, "South": 0.8, "East": 1.1, "West": 1.35}

SCHEMA = """
CREATE TABLE sales (
    id          INTEGER PRIMARY KEY,
    sold_on     TEXT    NOT NULL,   -- YYYY-MM-DD
    region      TEXT    NOT NULL,
    product     TEXT    NOT NULL,
    units       INTEGER NOT NULL,
    unit_price  REAL    NOT NULL
);
CREATE INDEX sales_by_date ON sales (sold_on);
"""


def rows(seed: int = SEED):
    rng = random.Random(seed)
    weight = dict(REGION_WEIGHT)
    if seed != SEED:  # another seed also deals the regions' weights anew: another region may lead
        weight = dict(zip(REGIONS, rng.sample(list(REGION_WEIGHT.values()), len(REGIONS))))
    start = date(2026, 1, 1)
    for sale_id in range(1, ROWS + 1):
        region = rng.choice(REGIONS)
        product = rng.choice(list(PRODUCTS))
        units = max(1, round(rng.randint(1, 40) * weight[region]))
        sold_on = start + timedelta(days=rng.randrange(365))
        yield sale_id, sold_on.isoformat(), region, product, units, PRODUCTS[product]


def create_dataset(path: Path, seed: int = SEED) -> Path:
    """Write the dataset to a new file at `path` (written aside, then renamed into place).

    Two workers starting at once may both find the file missing: each writes its own copy under
    its own name, and the renames replace one complete file with an identical one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")
    try:
        with sqlite3.connect(partial) as db:
            db.executescript(SCHEMA)
            db.executemany("INSERT INTO sales VALUES (?, ?, ?, ?, ?, ?)", rows(seed))
        db.close()
        partial.replace(path)  # atomic: a reader never sees half a dataset
    finally:
        partial.unlink(missing_ok=True)
    return path


def ensure_dataset(path: Path | None = None) -> Path:
    """The dataset's path, creating the file first if it does not exist."""
    path = Path(path or database_path())
    if not path.exists():
        create_dataset(path)
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Create the lab's sales dataset if it is missing.")
    parser.add_argument("path", nargs="?", type=Path, help="default: $LAB06_DATABASE or .lab/lab06_sales.sqlite")
    parser.add_argument("--seed", type=int, default=SEED, help=f"another seed, other data (default {SEED})")
    args = parser.parse_args()
    target = Path(args.path or database_path())
    if not target.exists():
        create_dataset(target, args.seed)
    with sqlite3.connect(target) as db:
        (count,) = db.execute("SELECT COUNT(*) FROM sales").fetchone()
    print(f"{target}: {count} sales")
