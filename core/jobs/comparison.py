"""Comparing two jobs over the same items: agreement, and the items whose labels differ.

``bulkscore compare`` scores a finished job's items again with another model (a new job
over a copy of the items) and then compares the two results tables row by row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Connection, and_, select

from core.tables import items, results


@dataclass(frozen=True, slots=True)
class Difference:
    """An item the two models label differently."""

    index: int
    item_id: str
    text: str | None
    label_a: str
    score_a: float | None
    label_b: str
    score_b: float | None


@dataclass(slots=True)
class Comparison:
    """Counts over the items both jobs scored, and every difference in index order."""

    compared: int = 0  # both jobs gave the item a label
    agreeing: int = 0
    errors: int = 0  # one job or both have an error for the item instead of a label
    differences: list[Difference] = field(default_factory=list)

    @property
    def agreement(self) -> float | None:
        """The share of compared items with the same label (None if none compared)."""
        return self.agreeing / self.compared if self.compared else None


def compare_jobs(conn: Connection, job_a: str, job_b: str) -> Comparison:
    """Compare the results of two jobs item by item (matched by index)."""
    a = results.alias("a")
    b = results.alias("b")
    query = (
        select(
            a.c.index.label("position"),  # not "index": a Row's index() is a tuple method
            a.c.item_id,
            items.c.text,
            a.c.label.label("label_a"),
            a.c.score.label("score_a"),
            a.c.error.label("error_a"),
            b.c.label.label("label_b"),
            b.c.score.label("score_b"),
            b.c.error.label("error_b"),
        )
        .select_from(
            a.join(b, and_(b.c.job_id == job_b, b.c.index == a.c.index)).join(
                items, and_(items.c.job_id == job_a, items.c.index == a.c.index)
            )
        )
        .where(a.c.job_id == job_a)
        .order_by(a.c.index)
    )
    comparison = Comparison()
    for row in conn.execute(query):
        if row.error_a is not None or row.error_b is not None or None in (row.label_a, row.label_b):
            comparison.errors += 1
            continue
        comparison.compared += 1
        if row.label_a == row.label_b:
            comparison.agreeing += 1
        else:
            comparison.differences.append(
                Difference(
                    index=row.position,
                    item_id=row.item_id,
                    text=row.text,
                    label_a=row.label_a,
                    score_a=row.score_a,
                    label_b=row.label_b,
                    score_b=row.score_b,
                )
            )
    return comparison
