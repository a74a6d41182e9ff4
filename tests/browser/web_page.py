"""eddy's web page in a real browser: headless Chromium driven by Selenium
(chromium and chromium-driver from Debian, Selenium from PyPI; the test
script installs them). Opens the page, sees the list of views and the
operator graph of a running view, writes rows through psycopg and sees the
figures on the page change without reloading it.

Usage: python web_page.py <http base url> <postgres port> [screenshot.png]
(the schema is made by tests/browser.rs)
"""
import json
import sys
import urllib.request

import psycopg
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

TIMEOUT = 30


def browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-dev-shm-usage", "--window-size=1400,1600"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def cell(driver, view: str, column: str) -> str:
    return driver.find_element(
        By.CSS_SELECTOR, f'tr.view[data-view="{view}"] td[data-column="{column}"]').text


def main(base: str, pg_port: str, screenshot: str | None) -> None:
    status = json.load(urllib.request.urlopen(f"{base}/api/status"))
    operators = {v["name"]: len(v["operators"]) for v in status["views"]}
    assert set(operators) == {"per_page", "busy_pages"}, operators

    driver = browser()
    try:
        driver.get(f"{base}/?view=per_page")
        # The page redraws its tables as it polls: an element found just
        # before a redraw is stale when read, so a wait tries again.
        wait = WebDriverWait(driver, TIMEOUT,
                             ignored_exceptions=(StaleElementReferenceException,))
        # The list of views, with their row counts.
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, 'tr.view[data-view="busy_pages"]'))
        wait.until(lambda d: cell(d, "per_page", "rows") == "2")
        # The operator graph of the chosen view: one box per operator.
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#graph .operator"))
                   == operators["per_page"])
        assert "per_page" in driver.find_element(By.ID, "graph-title").text
        labels = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#graph .operator text")]
        assert any("Scan: clicks" in t for t in labels), labels
        assert any("Aggregate" in t for t in labels), labels

        def scan_rows_in(d) -> int:
            scan = [g for g in d.find_elements(By.CSS_SELECTOR, "#graph .operator")
                    if "Scan: clicks" in g.text]
            return int(scan[0].find_element(By.CSS_SELECTOR, "text.figures")
                       .get_attribute("data-rows-in"))

        before = wait.until(lambda d: (scan_rows_in(d),))[0]
        # Rows written now show up on the page as it polls: a number changes.
        with psycopg.connect(f"host=127.0.0.1 port={pg_port} user=eddy dbname=eddy",
                             autocommit=True) as conn:
            conn.execute("INSERT INTO clicks VALUES ('/c', 1), ('/d', 2), ('/e', 3)")
            conn.execute("FLUSH")
        wait.until(lambda d: cell(d, "per_page", "rows") == "5")
        wait.until(lambda d: scan_rows_in(d) == before + 3)
        # The epoch in the header moves too.
        assert int(driver.find_element(By.ID, "epoch").text) >= status["epoch"]
        # Picking another view shows its graph.
        wait.until(lambda d: d.find_element(
            By.CSS_SELECTOR, 'tr.view[data-view="busy_pages"]').click() or True)
        wait.until(lambda d: "busy_pages" in d.find_element(By.ID, "graph-title").text)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#graph .operator"))
                   == operators["busy_pages"])
        # The charts and the checkpoint history are drawn.
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#chart-throughput polyline"))
        assert driver.find_elements(By.CSS_SELECTOR, "#checkpoints tbody tr")
        if screenshot:
            driver.find_element(By.CSS_SELECTOR, 'tr.view[data-view="per_page"]').click()
            driver.save_screenshot(screenshot)
    finally:
        driver.quit()
    print("browser ok")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
