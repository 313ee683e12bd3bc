"""The Ask page in a real browser: headless Chromium (Debian's package, driven by Playwright)
against a real stack (Redis, Generation, Retrieval, a worker, the gateway serving the page, all
with an API key). MESHLLM_SCREENSHOTS=DIR saves both tabs as PNGs there (docs/ holds the README's)."""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from harness.mesh import Mesh

sync_api = pytest.importorskip("playwright.sync_api")

KEY = "page-test-key"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ZEPHYR = ("The Zephyr rocket launch is scheduled for Monday at 9am from pad 39A. "
          "The launch director is Ada Brooks, who has led eleven launches.")


@pytest.fixture(scope="module")
def stack(redis_server):
    m = Mesh(redis_server.url, f"web{uuid.uuid4().hex[:8]}:", env_extra={"MESHLLM_API_KEYS": KEY})
    try:
        procs = {"generation": m.service("generation", wait=False)}
        procs["retrieval"] = m.service("retrieval", wait=False, MESHLLM_GENERATION_ADDRESS=procs["generation"].address,
                                       MESHLLM_GENERATION_API_KEY=KEY)
        m.worker(wait=False)
        for proc in procs.values():
            m.wait_serving(proc, timeout=600)
        m.gateway_proc = m.gateway(procs, wait=False)
        m.wait_serving(m.gateway_proc, timeout=600)
        yield m
    finally:
        m.stop()


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM, "Chromium is needed for the page tests (make setup installs Debian's chromium)"
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser, stack):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.goto(stack.gateway_proc.url + "/")
    yield page
    context.close()


def screenshot(page, name: str) -> None:
    folder = os.environ.get("MESHLLM_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / name), full_page=True)


def test_a_wrong_key_shows_the_error_in_words(page):
    page.fill("#api-key", "not-the-key")
    page.fill("#question", "When is the launch?")
    page.click("#ask-button")
    error = page.locator("#error")
    error.wait_for(state="visible", timeout=30_000)
    assert "API key is missing or wrong" in error.inner_text()


def test_ingest_through_the_page_then_ask_and_follow_a_citation(page, tmp_path):
    """Paste one document and upload two files in the Documents tab (per-document status and
    progress), find them in the list, then ask about the pasted one: the answer streams in, its
    sources sit beside it, and a citation link highlights its source."""
    page.fill("#api-key", KEY)
    page.click("#tab-docs")
    page.fill("#doc-id", "zephyr")
    page.fill("#doc-source", "launch-notes.md")
    page.fill("#doc-text", ZEPHYR)
    (tmp_path / "bread.txt").write_text("Sourdough bread rises because wild yeast ferments the dough.")
    (tmp_path / "tea.md").write_text("# Tea\n\nGreen tea is steeped at 80 degrees for two minutes.")
    page.set_input_files("#files", [str(tmp_path / "bread.txt"), str(tmp_path / "tea.md")])
    page.click("#ingest-button")
    page.wait_for_function("document.querySelector('#ingest-count').textContent === '3 / 3'", timeout=120_000)
    results = page.locator("#ingest-results li").all_inner_texts()
    assert any(r.startswith("zephyr: added") for r in results), results
    assert any(r.startswith("bread.txt: added") for r in results) and any(r.startswith("tea.md: added")
                                                                           for r in results), results
    page.wait_for_selector("#documents tr[data-id='zephyr']", timeout=30_000)
    assert page.locator("#documents tr[data-id='tea.md'] td").nth(1).inner_text() == "tea.md"
    screenshot(page, "documents-tab.png")
    page.click("#ingest-button")                  # nothing chosen: said so, not sent
    assert "Choose files or paste" in page.locator("#error").inner_text()

    page.click("#tab-ask")
    page.fill("#question", "Who is the launch director of the Zephyr rocket?")
    page.click("#ask-button")
    page.wait_for_selector("#answer-box[data-done='true']", timeout=300_000)
    assert page.locator("#error").is_hidden(), page.locator("#error").inner_text()
    assert page.locator("#answer").inner_text().strip()
    sources = page.locator("#sources li").all_inner_texts()
    assert any("Ada Brooks" in s and "launch-notes.md" in s for s in sources), sources
    link = page.locator("#answer a.cite").first
    link.wait_for(timeout=10_000)
    number = link.get_attribute("data-n")
    link.click()
    assert "highlight" in page.locator(f"#src-{number}").get_attribute("class")
    screenshot(page, "ask-tab.png")

    page.fill("#question", "How many moons does Neptune have?")      # nothing in these documents
    page.click("#ask-button")
    page.wait_for_selector("#answer-box[data-done='true']", timeout=300_000)
    assert page.locator("#no-source").is_visible()


def test_delete_from_the_list(page):
    page.fill("#api-key", KEY)
    page.click("#tab-docs")
    row = page.locator("#documents tr[data-id='bread.txt']")
    row.wait_for(timeout=30_000)
    page.once("dialog", lambda dialog: dialog.accept())
    row.locator("button.delete").click()
    page.wait_for_selector("#documents tr[data-id='bread.txt']", state="detached", timeout=30_000)
    page.wait_for_selector("#documents tr[data-id='zephyr']", timeout=30_000)      # the list, reloaded
    assert page.locator("#documents tr[data-id='bread.txt']").count() == 0
