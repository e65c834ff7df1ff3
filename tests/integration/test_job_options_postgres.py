"""Job metadata and the job list's cursor on the real PostgreSQL (migrated, not created):
the JSON column, timestamps to the microsecond, and jobs made in the same instant."""

from __future__ import annotations

from pathlib import Path

from api_support import TEXT_MODEL, FakeJobQueue, bearer, serve, write_api_models_file
from sqlalchemy import select, update

from core.config import Settings
from core.migrate import upgrade
from core.tables import jobs


def test_metadata_and_cursor_paging_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    upgrade(pg_url)
    settings = Settings(
        database_url=pg_url,
        models=write_api_models_file(tmp_path / "models.toml"),
        rate_limit_per_min=0,
    )
    labels = {"équipe": "recherche ✓", "quote": 'it\'s "fine"', "empty": ""}
    with serve(settings, FakeJobQueue()) as api:
        made = []
        for n in range(7):
            body = {
                "model": TEXT_MODEL,
                "inputs": [{"text": "x"}],
                "metadata": {**labels, "n": str(n)},
            }
            answer = api.client.post("/v1/jobs", json=body, headers=bearer(api.key))
            assert answer.status_code == 202, answer.text
            made.append(answer.json()["id"])
        # Three jobs created in the same microsecond: the id breaks the tie, so none is
        # skipped or repeated at a page boundary.
        with api.engine.begin() as conn:
            instant = conn.execute(select(jobs.c.created_at).where(jobs.c.id == made[3])).scalar()
            conn.execute(update(jobs).where(jobs.c.id.in_(made[2:5])).values(created_at=instant))
            stored = conn.execute(select(jobs.c.metadata).where(jobs.c.id == made[0])).scalar()
        seen: list[str] = []
        after = None
        while True:
            params = {"limit": 2, **({"after": after} if after else {})}
            page = api.get("/v1/jobs", params=params).json()
            seen += [job["id"] for job in page["data"]]
            after = page["next_after"]
            if after is None:
                break
        first = api.get(f"/v1/jobs/{made[0]}").json()

    assert sorted(seen) == sorted(made) and len(seen) == len(made)
    assert seen[:2] == [made[6], made[5]] and seen[-2:] == [made[1], made[0]]
    assert stored == {**labels, "n": "0"}
    assert first["metadata"] == {**labels, "n": "0"}
