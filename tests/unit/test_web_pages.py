"""The web pages (api/web) through the app: sign-in sessions, CSRF, ownership, escaping,
filters, downloads, actions and thumbnails. The real-browser tests are in
tests/integration/test_web_browser.py."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from api_support import IMAGE_MODEL, UnitApi, fake_scores, unit_api
from PIL import Image
from sqlalchemy import select

from api.web.session import COOKIE
from core.keys import authenticate, hash_key, revoke_key
from core.models.registry import Registry
from core.models.trained import register_trained_model
from core.rate_limit import Decision
from core.schedules.runs import RunStatus, claim, set_run
from core.tables import web_sessions
from core.web_sessions import csrf_token


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[UnitApi]:
    with unit_api(tmp_path, chunk_size=3) as api:
        yield api


def sign_in(api: UnitApi, key: str) -> str:
    """Sign the client in with ``key``; return the page's CSRF token."""
    api.client.cookies.clear()
    answer = api.client.post("/signin", data={"api_key": key}, follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/jobs"
    return csrf_token(api.client.cookies[COOKIE])


def test_pages_need_a_session_and_send_to_the_sign_in_page(api: UnitApi) -> None:
    for path in ("/jobs", "/submit", "/models", "/schedules", "/workers", "/jobs/x"):
        answer = api.client.get(path, follow_redirects=False)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/signin")


def test_a_wrong_key_is_refused_and_sets_no_cookie(api: UnitApi) -> None:
    answer = api.client.post("/signin", data={"api_key": "bsk_nope"}, follow_redirects=False)
    assert answer.status_code == 401
    assert "Unknown or revoked key" in answer.text
    assert COOKIE not in answer.cookies


def test_the_session_cookie_is_httponly_strict_and_stored_only_as_a_hash(api: UnitApi) -> None:
    answer = api.client.post("/signin", data={"api_key": api.key}, follow_redirects=False)
    header = answer.headers["set-cookie"].lower()
    assert "httponly" in header and "samesite=strict" in header
    token = answer.cookies[COOKIE]
    with api.engine.connect() as conn:
        stored = [row.token_hash for row in conn.execute(select(web_sessions))]
    assert len(stored) == 1 and token not in stored[0] and len(stored[0]) == 64


def test_sign_out_needs_the_csrf_token_and_ends_the_session(api: UnitApi) -> None:
    csrf = sign_in(api, api.key)
    token = api.client.cookies[COOKIE]
    assert api.client.post("/signout", data={}, follow_redirects=False).status_code == 403
    answer = api.client.post("/signout", data={"csrf": csrf}, follow_redirects=False)
    assert answer.status_code == 303
    api.client.cookies.set(COOKIE, token)  # the old cookie, replayed, no longer signs in
    assert api.client.get("/jobs", follow_redirects=False).status_code == 303


def test_the_sign_in_redirect_stays_on_this_site(api: UnitApi) -> None:
    data = {"api_key": api.key, "next": "//evil.example/x"}
    answer = api.client.post("/signin", data=data, follow_redirects=False)
    assert answer.headers["location"] == "/jobs"


def test_jobs_page_lists_own_jobs_newest_first_and_filters(api: UnitApi) -> None:
    first = api.post_job(["a"]).json()["id"]
    second = api.post_job(["b", "c"]).json()["id"]
    api.post_job(["other"], key=api.other_key)
    fake_scores(api.engine, first, [0])
    sign_in(api, api.key)
    page = api.client.get("/jobs").text
    ids = re.findall(r'href="/jobs/([0-9a-f]{32})"', page)
    assert ids == [second, first]
    completed = api.client.get("/jobs", params={"status": "completed"}).text
    assert re.findall(r'href="/jobs/([0-9a-f]{32})"', completed) == [first]
    assert "No jobs" in api.client.get("/jobs", params={"model": "pictures"}).text


def test_another_keys_job_is_404_on_every_page(api: UnitApi) -> None:
    job_id = api.post_job(["secret"], key=api.other_key).json()["id"]
    csrf = sign_in(api, api.key)
    for path in (f"/jobs/{job_id}", f"/jobs/{job_id}/progress", f"/jobs/{job_id}/download.csv"):
        assert api.client.get(path).status_code == 404, path
    answer = api.client.post(f"/jobs/{job_id}/cancel", data={"csrf": csrf})
    assert answer.status_code == 404
    assert api.get(f"/v1/jobs/{job_id}", key=api.other_key).json()["status"] == "queued"


def test_a_script_text_is_shown_escaped(api: UnitApi) -> None:
    job_id = api.post_job(["<script>alert(1)</script>"]).json()["id"]
    fake_scores(api.engine, job_id, [0])
    sign_in(api, api.key)
    page = api.client.get(f"/jobs/{job_id}").text
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_results_filters_errors_label_and_score(api: UnitApi) -> None:
    job_id = api.post_job([f"text {i}" for i in range(6)]).json()["id"]
    fake_scores(api.engine, job_id, range(6))  # odd indexes are errors
    sign_in(api, api.key)

    def shown(**params: str) -> list[str]:
        page = api.client.get(f"/jobs/{job_id}", params=params).text
        return re.findall(r'<td class="input-text">([^<]*)</td>', page)

    assert shown() == [f"text {i}" for i in range(6)]
    assert shown(errors="1") == ["text 1", "text 3", "text 5"]
    assert shown(label="POSITIVE") == ["text 0", "text 2", "text 4"]
    assert shown(score_below="0.5") == []
    assert shown(score_below="0.8") == ["text 0", "text 2", "text 4"]
    assert shown(score_below="not a number") == shown()


def test_the_progress_endpoint_follows_the_counts(api: UnitApi) -> None:
    job_id = api.post_job(["a", "b", "c", "d"]).json()["id"]
    sign_in(api, api.key)
    assert api.client.get(f"/jobs/{job_id}/progress").json()["percent"] == 0
    fake_scores(api.engine, job_id, [0, 1])
    progress = api.client.get(f"/jobs/{job_id}/progress").json()
    assert progress == {
        "status": "running",
        "final": False,
        "succeeded": 1,
        "failed": 1,
        "total": 4,
        "percent": 50.0,
    }


def test_downloads_equal_the_api_export(api: UnitApi) -> None:
    job_id = api.post_job([f"text {i}" for i in range(5)]).json()["id"]
    fake_scores(api.engine, job_id, range(5))
    sign_in(api, api.key)
    for fmt in ("csv", "jsonl"):
        page = api.client.get(f"/jobs/{job_id}/download.{fmt}")
        exported = api.get(f"/v1/jobs/{job_id}/results", params={"format": fmt})
        assert page.status_code == 200 and page.content == exported.content


def test_actions_need_the_csrf_token(api: UnitApi) -> None:
    job_id = api.post_job(["a", "b"]).json()["id"]
    csrf = sign_in(api, api.key)
    refused = api.client.post(f"/jobs/{job_id}/cancel", data={}, follow_redirects=False)
    assert refused.status_code == 403
    wrong = api.client.post(f"/jobs/{job_id}/cancel", data={"csrf": "0" * 64})
    assert wrong.status_code == 403
    assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
    done = api.client.post(f"/jobs/{job_id}/cancel", data={"csrf": csrf}, follow_redirects=False)
    assert done.status_code == 303
    assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
    assert "Cancel asked" in api.client.get(done.headers["location"]).text


def test_retry_requeues_the_failed_items(api: UnitApi) -> None:
    job_id = api.post_job(["a", "b", "c"]).json()["id"]
    fake_scores(api.engine, job_id, range(3))
    csrf = sign_in(api, api.key)
    assert 'id="retry"' in api.client.get(f"/jobs/{job_id}").text
    api.client.post(f"/jobs/{job_id}/retry", data={"csrf": csrf})
    assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "running"
    assert api.queue.sent[-1][0] == job_id


def test_submit_page_pasted_texts_and_csrf(api: UnitApi) -> None:
    csrf = sign_in(api, api.key)
    form = {"model": "tiny", "priority": "high", "texts": "one\ntwo\n"}
    assert api.client.post("/submit", data=form).status_code == 403
    answer = api.client.post("/submit", data={**form, "csrf": csrf}, follow_redirects=False)
    assert answer.status_code == 303
    job_id = answer.headers["location"].rsplit("/", 1)[1]
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["counts"]["total"] == 2 and job["priority"] == "high"


def test_submit_page_file_upload_and_a_clear_error(api: UnitApi) -> None:
    csrf = sign_in(api, api.key)
    files = {"file": ("texts.csv", b"id,text\nx,hello\ny,world\n", "text/csv")}
    data = {"model": "tiny", "csrf": csrf}
    answer = api.client.post("/submit", data=data, files=files, follow_redirects=False)
    assert answer.status_code == 303
    bad = {"file": ("texts.pdf", b"%PDF", "application/pdf")}
    refused = api.client.post("/submit", data=data, files=bad)
    assert refused.status_code == 422 and "must end in one of" in refused.text
    unknown = api.client.post("/submit", data={**data, "model": "nope", "texts": "hi"})
    assert unknown.status_code == 422


def _png(color: tuple[int, int, int], size: tuple[int, int] = (400, 300)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def test_image_job_thumbnails_are_small_cacheable_jpegs(api: UnitApi) -> None:
    body = {
        "model": IMAGE_MODEL,
        "inputs": [
            {"id": "red.png", "image_base64": base64.b64encode(_png((200, 0, 0))).decode()},
            {"id": "junk.png", "image_base64": base64.b64encode(b"not an image").decode()},
        ],
    }
    job_id = api.client.post("/v1/jobs", json=body, headers={"Authorization": f"Bearer {api.key}"})
    job_id = job_id.json()["id"]
    fake_scores(api.engine, job_id, [0, 1], model=IMAGE_MODEL)
    sign_in(api, api.key)
    page = api.client.get(f"/jobs/{job_id}").text
    assert f'src="/jobs/{job_id}/thumbs/0.jpg"' in page
    assert 'class="top1">POSITIVE</strong>' in page and "NEGATIVE 0.250" in page
    thumb = api.client.get(f"/jobs/{job_id}/thumbs/0.jpg")
    assert thumb.headers["content-type"] == "image/jpeg"
    assert "max-age" in thumb.headers["cache-control"]
    assert Image.open(io.BytesIO(thumb.content)).size == (213, 160)
    assert api.client.get(f"/jobs/{job_id}/thumbs/1.jpg").status_code == 404
    assert api.client.get(f"/jobs/{job_id}/thumbs/9.jpg").status_code == 404


def test_models_and_workers_pages(api: UnitApi) -> None:
    sign_in(api, api.key)
    models = api.client.get("/models").text
    assert "tiny" in models and "pictures" in models
    workers = api.client.get("/workers").text
    assert '<td>tiny</td><td class="num">1</td>' in workers
    assert "<td>normal</td>" in workers


def test_docs_are_served_without_a_cdn(api: UnitApi) -> None:
    page = api.client.get("/docs").text
    assert "cdn" not in page.lower()
    scripts = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert scripts and all(url.startswith("/static/swagger/") for url in scripts), scripts
    for url in scripts:
        assert api.client.get(url).status_code == 200, url
    assert api.client.get("/redoc").status_code == 404


def test_an_image_over_the_pixel_limit_gets_no_thumbnail(tmp_path: Path) -> None:
    with unit_api(tmp_path, max_image_pixels=10_000) as api:
        image = base64.b64encode(_png((0, 90, 0))).decode()  # 400 x 300 = 120,000 pixels
        body = {"model": IMAGE_MODEL, "inputs": [{"id": "big.png", "image_base64": image}]}
        answer = api.client.post(
            "/v1/jobs", json=body, headers={"Authorization": f"Bearer {api.key}"}
        )
        job_id = answer.json()["id"]
        sign_in(api, api.key)
        assert api.client.get(f"/jobs/{job_id}/thumbs/0.jpg").status_code == 404


def test_ids_that_cannot_be_ids_answer_404_not_500(api: UnitApi) -> None:
    sign_in(api, api.key)
    for job_id in ("%00", "x" * 300, "%ED%A0%80"):
        assert api.client.get(f"/jobs/{job_id}").status_code == 404, job_id
        assert api.client.get(f"/jobs/{job_id}/progress").status_code == 404, job_id
    job_id = api.post_job(["a"]).json()["id"]
    assert api.client.get(f"/jobs/{job_id}/thumbs/99999999999.jpg").status_code == 422
    assert api.client.get(f"/jobs/{job_id}/thumbs/0.jpg").status_code == 404  # a text item


class OneJobLimiter:
    """A rate limiter that allows one submission per bucket (the real one is in Redis)."""

    per_minute = 1

    def __init__(self) -> None:
        self.buckets: list[str] = []

    def take(self, bucket: str) -> Decision:
        self.buckets.append(bucket)
        return Decision(allowed=self.buckets.count(bucket) == 1, retry_after_s=7)

    def close(self) -> None:
        pass


def test_page_submissions_share_the_keys_rate_limit(api: UnitApi) -> None:
    limiter = OneJobLimiter()
    api.client.app.state.rate_limiter = limiter  # type: ignore[attr-defined]
    csrf = sign_in(api, api.key)
    form = {"model": "tiny", "texts": "one", "csrf": csrf}
    assert api.client.post("/submit", data=form, follow_redirects=False).status_code == 303
    refused = api.client.post("/submit", data=form)
    assert refused.status_code == 429 and "retry in 7 s" in refused.text
    assert refused.headers["Retry-After"] == "7", "the same refusal as the API's"
    assert limiter.buckets == [hash_key(api.key)[:32]] * 2  # the bucket of its API calls


def test_pages_forbid_framing_and_foreign_scripts(api: UnitApi) -> None:
    sign_in(api, api.key)
    headers = api.client.get("/jobs").headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert "script-src" not in headers["content-security-policy"]  # default-src 'self'
    assert headers["x-frame-options"] == "DENY"


def test_schedules_page_shows_the_keys_schedules_with_their_runs(api: UnitApi) -> None:
    with api.settings.models.open("a", encoding="utf-8") as models:
        models.write(
            '\n[schedules.mine]\ncron = "0 2 * * *"\nmodel = "tiny"\nsource = "jsonl"\n'
            'path = "incoming/*.jsonl"\nowner_key = "owner"\n'
            '\n[schedules.theirs]\ncron = "0 3 * * *"\nmodel = "tiny"\nsource = "jsonl"\n'
            'path = "other/*.jsonl"\nowner_key = "stranger"\n'
        )
    job_id = api.post_job(["a", "b"]).json()["id"]
    fake_scores(api.engine, job_id, [0, 1])
    run_id = claim(api.engine, "mine", datetime(2026, 12, 1, 2, 0, tzinfo=UTC))
    assert run_id is not None
    with api.engine.begin() as conn:
        set_run(conn, run_id, status=RunStatus.RUNNING, job_id=job_id, items=2)
    sign_in(api, api.key)
    page = api.client.get("/schedules").text
    assert 'id="schedule-mine"' in page and "theirs" not in page
    assert f'href="/jobs/{job_id}"' in page and "2026-12-01 02:00" in page
    assert "next due" in page


def _register(api: UnitApi, name: str, key: str, accuracy: float) -> None:
    base = Registry.load(api.settings.models).models["tiny"]
    metrics = {
        "accuracy": accuracy,
        "macro_f1": 0.7,
        "per_label": {
            "good": {"precision": 0.8, "recall": 0.9, "f1": 0.847, "support": 10},
            "bad": {"precision": 0.6, "recall": 0.5, "f1": 0.545, "support": 6},
        },
        "confusion_matrix": [[9, 1], [3, 3]],
    }
    with api.engine.begin() as conn:
        register_trained_model(
            conn,
            name=name,
            base=base,
            labels=["good", "bad"],
            metrics=metrics,
            head=b"head",
            job_id=None,
            owner_key_id=authenticate(conn, key),
        )


def test_model_page_shows_a_trained_models_evaluation_and_versions(api: UnitApi) -> None:
    _register(api, "my-labels", api.key, 0.70)
    _register(api, "my-labels", api.key, 0.75)
    _register(api, "their-labels", api.other_key, 0.9)
    sign_in(api, api.key)
    listing = api.client.get("/models").text
    assert 'href="/models/my-labels"' in listing and "their-labels" not in listing
    assert "<td>fp32</td>" in listing  # precision
    page = api.client.get("/models/my-labels").text
    assert "my-labels v2" in page and ">0.750<" in page
    assert re.findall(r"<td>(good|bad)</td><td class=\"num\">([0-9.]+)</td>", page) == [
        ("good", "0.800"),
        ("bad", "0.600"),
    ]
    cells = re.findall(r"<title>(\w+) → (\w+): (\d+)</title>", page)
    assert cells == [
        ("good", "good", "9"),
        ("good", "bad", "1"),
        ("bad", "good", "3"),
        ("bad", "bad", "3"),
    ]
    assert 'href="/models/my-labels?version=1"' in page
    assert "my-labels v1" in api.client.get("/models/my-labels", params={"version": 1}).text
    assert api.client.get("/models/their-labels").status_code == 404
    assert "Model tiny" in api.client.get("/models/tiny").text


def test_sign_in_from_another_sites_page_is_refused(api: UnitApi) -> None:
    data = {"api_key": api.key}
    foreign = {"Origin": "https://evil.example"}
    refused = api.client.post("/signin", data=data, headers=foreign, follow_redirects=False)
    assert refused.status_code == 403 and COOKIE not in refused.cookies
    own = {"Origin": "http://testserver"}
    answer = api.client.post("/signin", data=data, headers=own, follow_redirects=False)
    assert answer.status_code == 303


def test_a_revoked_keys_sessions_stop_at_once(api: UnitApi) -> None:
    sign_in(api, api.key)
    assert api.client.get("/jobs", follow_redirects=False).status_code == 200
    with api.engine.begin() as conn:
        revoke_key(conn, "owner")
    assert api.client.get("/jobs", follow_redirects=False).status_code == 303
