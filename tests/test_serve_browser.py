"""The web page of `gadei serve`, driven in headless Chromium (Debian's chromium and
chromium-driver): paste a key, upload a CSV, watch the status, classify, save a screenshot."""
from __future__ import annotations

import shutil

import pytest

from tests.serve_helpers import FAST, Service, add_tenant, generated_csv

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service as DriverService  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
FOREVER = 10**6      # waits are bounded by the test's timeout, not by a guess at the machine's speed


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1100,1300", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=DriverService(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def text_of(driver, css):
    """The text of the first element matching `css` (None if none), read in one script: the page
    re-renders its table every 2 s, which would leave a found element stale."""
    return driver.execute_script("const e = document.querySelector(arguments[0]); return e && e.textContent;", css)


@pytest.mark.timeout(400)
def test_upload_watch_and_classify_in_the_browser(tmp_path, browser):
    state = tmp_path / "state"
    key = add_tenant(state, "alice")
    data = tmp_path / "weather.csv"
    data.write_bytes(generated_csv())
    s = Service(state, FAST).start()
    try:
        browser.get(s.url + "/")
        wait = WebDriverWait(browser, FOREVER, poll_frequency=0.2)
        browser.find_element(By.ID, "key").send_keys(key)
        browser.find_element(By.ID, "key-save").click()
        wait.until(lambda d: text_of(d, "#key-status") == "key accepted")

        browser.find_element(By.ID, "upload-name").send_keys("weather from the browser")
        browser.find_element(By.ID, "upload-file").send_keys(str(data))
        browser.find_element(By.ID, "upload-submit").click()
        wait.until(lambda d: text_of(d, "#upload-status").startswith("created"))
        cid = s.call("GET", "/v1/classifiers", key).json()["classifiers"][0]["classifier_id"]
        row = f'#classifiers tr[data-id="{cid}"]'
        wait.until(lambda d: text_of(d, f"{row} td.status") == "Available")
        assert text_of(browser, f"{row} td:nth-child(4)") == "40 / 40"

        # the curve: the page drew the loss (red) and the validation accuracy (blue) of the
        # final metrics row, which always has both, as dots of 4 x 4 pixels at least
        count = ("const g = document.getElementById('curve').getContext('2d');"
                 "const px = g.getImageData(0, 0, 640, 240).data; let n = 0;"
                 "for (let i = 0; i < px.length; i += 4) if (px[i] === arguments[0] && px[i+1] === arguments[1]"
                 " && px[i+2] === arguments[2]) n++; return n;")
        wait.until(lambda d: d.execute_script(count, 217, 83, 79) >= 16 and d.execute_script(count, 42, 111, 219) >= 16)

        wait.until(lambda d: d.find_element(By.ID, "classify-submit").is_enabled())
        browser.find_element(By.ID, "classify-text").send_keys("a song on the radio")
        browser.find_element(By.ID, "classify-submit").click()
        wait.until(lambda d: text_of(d, "#classify-status").startswith("top class"))
        assert text_of(browser, "#classify-status") == "top class: music"
        bars = browser.find_elements(By.CSS_SELECTOR, "#classify-result .bar-row")
        assert [b.find_element(By.CLASS_NAME, "bar-name").text for b in bars][0] == "music"
        assert sorted(b.find_element(By.CLASS_NAME, "bar-name").text for b in bars) == ["money", "music", "weather"]

        shot = tmp_path / "serve-page.png"
        assert browser.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        s.stop()
