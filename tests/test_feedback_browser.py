"""The annotation page in a real browser (Debian's headless Chromium + chromedriver, via Selenium).

Logs in with the form, rates with the keyboard (digits choose, arrows move, Enter submits and
auto-advances), ranks with a tie, checks that a ranking nobody set cannot be submitted, and that
model output holding <script> and <img onerror> is shown as text and runs nothing. A screenshot of
the page is saved under test-artifacts/.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

from feedback.store import Store

CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM = next((p for p in ("/usr/lib/chromium/chromium", "/usr/bin/chromium") if Path(p).exists()), None)
ARTIFACTS = ROOT / "test-artifacts"
SCRIPT = "<script>window.__pwned = 1</script>Sure! 3 plus 4 is 7."
IMAGE = '<img src="x" onerror="window.__pwned = 2">3 plus 4 is 7.'

spec = importlib.util.spec_from_file_location("bench_feedback", ROOT / "benchmarks" / "bench_feedback.py")
bench = importlib.util.module_from_spec(spec)
sys.modules["bench_feedback"] = bench
spec.loader.exec_module(bench)


@pytest.fixture
def browser(tmp_path: Path):
    if CHROMIUM is None or not Path(CHROMEDRIVER).exists():
        pytest.fail("Chromium and chromedriver are needed: run bash scripts/test-setup.sh (it apt-installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1100",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def wait_for(condition, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the page")


def test_login_rate_with_keys_rank_and_untrusted_text_stays_text(browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    url = f"sqlite:///{tmp_path / 'f.db'}"
    store = Store.create(url)
    imported = store.import_items(
        [
            {"prompt": "What is 3 plus 4?", "candidates": [SCRIPT, IMAGE, "Ugh. 3 plus 5 is 8."]},
            {
                "prompt": "What is 2 plus 2?",
                "candidates": ["2 plus 2 is 4.", "Sure! 2 plus 2 is 4.", "I like cats.", "5."],
            },
        ]
    )
    store.assign_batch(imported.prompt_ids[1:], 2, "uncertainty", [0.987])  # a later round's item
    store.add_annotator("alice", password="alice-password")
    store.update_settings(mode="thumbs")
    server = bench.Server(url, bench.free_port(), tmp_path / "server.log")
    server.start()
    try:
        browser.get(server.base + "/")
        wait_for(lambda: browser.find_element(By.ID, "login-form").is_displayed())
        browser.find_element(By.NAME, "name").send_keys("alice")
        browser.find_element(By.NAME, "password").send_keys("alice-password")
        browser.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]").click()
        cards = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#responses .response"))
        assert len(cards) == 3
        texts = [c.find_element(By.CSS_SELECTOR, ".text").text for c in cards]
        assert sorted(texts) == sorted([SCRIPT, IMAGE, "Ugh. 3 plus 5 is 8."])  # shown literally
        assert browser.execute_script("return window.__pwned === undefined")
        assert browser.find_elements(By.CSS_SELECTOR, "#responses img, #responses script") == []
        assert "Guidelines" in browser.find_element(By.ID, "guidelines-panel").text
        assert not browser.find_element(By.ID, "batch").is_displayed()  # imported outside any round
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "feedback-annotate-thumbs.png"))

        body = browser.find_element(By.TAG_NAME, "body")
        up = {text: text != "Ugh. 3 plus 5 is 8." for text in texts}
        for text in texts:  # focus starts on the first response; each choice moves to the next
            body.send_keys("1" if up[text] else "2")
        body.send_keys(Keys.ENTER)
        wait_for(lambda: len(store.submission_ids()) == 1)
        # The API holds answers to the project's current mode: switch once the thumbs are in, and
        # reload, so the next item (already handed out) is asked as a ranking.
        store.update_settings(mode="ranking")
        browser.refresh()
        [first] = [i for i in store.records() if i.answers]
        by_text = {c.text: c.id for c in first.candidates}
        assert first.answers[0].thumbs == {by_text[t]: v for t, v in up.items()}

        cards = wait_for(
            lambda: (
                len(browser.find_elements(By.CSS_SELECTOR, "#responses .rank")) == 16
                and browser.find_elements(By.CSS_SELECTOR, "#responses .response")
            )
        )
        assert browser.find_element(By.ID, "submit").get_attribute("disabled") is not None
        assert browser.find_element(By.ID, "batch").text == "Batch 2"  # the round, never who chose it or why
        page = browser.find_element(By.TAG_NAME, "body").text
        assert "uncertainty" not in page and "0.987" not in page
        body = browser.find_element(By.TAG_NAME, "body")
        body.send_keys(Keys.ENTER)  # nothing ranked yet: nothing is sent
        time.sleep(0.5)
        assert len(store.submission_ids()) == 1
        texts = [c.find_element(By.CSS_SELECTOR, ".text").text for c in cards]
        wanted = {"Sure! 2 plus 2 is 4.": 1, "2 plus 2 is 4.": 1, "5.": 3, "I like cats.": 4}  # a tie at the top
        body.send_keys(Keys.ARROW_DOWN, Keys.ARROW_UP)  # arrows move; back to the first
        for text in texts:
            body.send_keys(str(wanted[text]))
        assert browser.find_element(By.ID, "submit").get_attribute("disabled") is None
        browser.save_screenshot(str(ARTIFACTS / "feedback-annotate-ranking.png"))
        body.send_keys(Keys.ENTER)
        wait_for(lambda: len(store.submission_ids()) == 2)
        second = next(i for i in store.records() if i.prompt_id != first.prompt_id)
        ids = {c.text: c.id for c in second.candidates}
        assert second.answers[0].ranks == {
            ids["Sure! 2 plus 2 is 4."]: 1,
            ids["2 plus 2 is 4."]: 1,
            ids["5."]: 2,
            ids["I like cats."]: 3,
        }
        wait_for(lambda: browser.find_element(By.ID, "done").is_displayed())  # auto-advanced to the end
        assert "answered 2" in browser.find_element(By.ID, "progress").text
        assert browser.execute_script("return window.__pwned === undefined")

        # The empty queue and a failed fetch of the next item (a 500 here) are shown, never thrown.
        browser.execute_script(
            """
            window.__rejections = 0;
            window.addEventListener("unhandledrejection", () => { window.__rejections += 1; });
            window.__fetch = window.fetch;
            window.fetch = async () => new Response(JSON.stringify({ detail: "database on fire" }),
              { status: 500, headers: { "Content-Type": "application/json" } });
            """
        )
        browser.find_element(By.ID, "check-again").click()
        wait_for(lambda: "Could not load the next item" in browser.find_element(By.ID, "done-title").text)
        assert "database on fire" in browser.find_element(By.ID, "done-text").text
        assert not browser.find_element(By.ID, "annotate").is_displayed()
        browser.execute_script("window.fetch = window.__fetch;")
        browser.find_element(By.ID, "check-again").click()
        wait_for(lambda: "Nothing left to annotate" in browser.find_element(By.ID, "done-title").text)
        assert browser.execute_script("return window.__rejections") == 0
    finally:
        server.stop()
        store.close()
