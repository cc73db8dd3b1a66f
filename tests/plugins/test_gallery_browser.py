"""The gallery in a real browser: headless Chromium (Debian's chromium + chromium-driver) driven by selenium.

Opens a tiny gallery from disk, counts the candidates shown, sorts, grades three candidates with the keyboard,
exports the grades through the page's download button, imports them into the catalogue and reads the GRADE
column back; the grades survive a reload (localStorage); a screenshot is saved; a 300-candidate page
builds every card (the first screenful at once, the rest in batches).  No browser is downloaded:
the test skips when /usr/bin/chromium, /usr/bin/chromedriver or selenium are missing.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _gallery_module():
    """The helpers of test_gallery.py (tests are not a package here: load the file by path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_gallery_helpers", Path(__file__).with_name("test_gallery.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def open_chromium(download_dir: Path, width: int = 1500, height: int = 1000):
    """A headless Chromium that saves downloads into ``download_dir``; skips the test when none is installed."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).is_file():
            pytest.skip(f"{path} not found: apt-get install {package}")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--allow-file-access-from-files"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(download_dir),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)})
    return driver


def _wait_for(predicate, timeout=10.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _big_page(folder: Path, n: int) -> Path:
    """A page of ``n`` image-less candidates (the page logic only)."""
    from lensengine.plugins._gallery_page import render_page

    gallery = {"catalog": "big.fits", "catalog_sha256": "0" * 64, "id": "big", "stem": "big",
               "score_columns": ["P_ENSEMBLE"], "labels": {"P_ENSEMBLE": "ensemble"}, "ensemble": "P_ENSEMBLE",
               "filter_column": "P_ENSEMBLE", "default_sort": "P_ENSEMBLE", "views": [["vis", "VIS"]]}
    rows = [{"k": f"T:{i}", "tile": "T", "oid": i, "name": f"LENS {i}", "rank": i + 1, "ra": 1.0, "dec": 2.0,
             "s": {"P_ENSEMBLE": 1 - i / n}, "flags": 0, "flag_text": "", "known": "", "known_sep": None,
             "tsne": None, "img": {}, "explain": []} for i in range(n)]
    folder.mkdir()
    index = folder / "index.html"
    index.write_text(render_page(gallery, rows, title="big", meta="", views_help="", filter_label="ensemble"))
    return index


def test_gallery_in_headless_chromium(tmp_path):
    helpers = _gallery_module()
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from lensengine.catalogs.catalog import read_catalog

    store, catalog = helpers.make_gallery_inputs(tmp_path, n=12)
    cli = helpers._cli()
    built = CliRunner().invoke(cli, ["gallery", str(catalog), "--tiles", str(store), "--out", str(tmp_path / "g"),
                                     "--top", "10"])
    assert built.exit_code == 0, built.output
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver = open_chromium(downloads)
    try:
        driver.get((tmp_path / "g" / "index.html").as_uri())
        _wait_for(lambda: driver.execute_script("return !!(window.lensGallery && window.lensGallery.completeAt)"),
                  what="the page's cards")
        cards = driver.find_elements(By.CSS_SELECTOR, "article.card")
        assert len(cards) == 10 and driver.find_element(By.ID, "count").text == "10"
        ranks = [int(c.find_element(By.TAG_NAME, "h2").text.split()[0][1:]) for c in cards]
        assert ranks == sorted(ranks)  # default: the ensemble score, i.e. rank order
        assert driver.execute_script("return document.querySelectorAll('img[loading=lazy]').length") >= 30

        Select(driver.find_element(By.ID, "sort")).select_by_value("P_OU_200")
        first = driver.find_elements(By.CSS_SELECTOR, "article.card")[0].find_element(By.TAG_NAME, "h2").text
        oids = [int(e.text.split("/")[1].split()[0]) for e in driver.find_elements(By.CSS_SELECTOR, "h2 .id")]
        p200 = {int(o): float(p) for o, p in zip(read_catalog(catalog)["OBJECT_ID"], read_catalog(catalog)["P_OU_200"])}
        assert [p200[o] for o in oids] == sorted((p200[o] for o in oids), reverse=True), first

        ActionChains(driver).send_keys("a").send_keys("j").send_keys("b").send_keys("x").perform()
        graded = {int(e.text.split("/")[1].split()[0]): e.find_element(By.XPATH, "../..").find_element(
            By.CLASS_NAME, "grade").text for e in driver.find_elements(By.CSS_SELECTOR, "h2 .id")}
        expected = {oids[0]: "A", oids[2]: "B", oids[3]: "X"}
        assert {o: g for o, g in graded.items() if g} == expected
        assert driver.find_element(By.ID, "graded").text.startswith("3 graded (A 1, B 1, C 0, X 1)")

        driver.find_element(By.ID, "export-json").click()
        exported = _wait_for(lambda: [p for p in downloads.glob("*.json")], what="the JSON download")[0]
        driver.find_element(By.ID, "export-csv").click()
        _wait_for(lambda: list(downloads.glob("*.csv")), what="the CSV download")
        shot = tmp_path / "gallery.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 20_000

        driver.refresh()  # the grades live in localStorage: a reload keeps them
        _wait_for(lambda: driver.execute_script("return !!window.lensGallery"), what="the reloaded page")
        assert driver.find_element(By.ID, "graded").text.startswith("3 graded")

        big = _big_page(tmp_path / "big", 300)  # more cards than the first screenful: the rest follow
        driver.get(big.as_uri())
        _wait_for(lambda: driver.execute_script("return !!(window.lensGallery && window.lensGallery.completeAt)"),
                  what="all 300 cards")
        assert len(driver.find_elements(By.CSS_SELECTOR, "article.card")) == 300
        assert driver.find_element(By.ID, "count").text == "300"
    finally:
        driver.quit()

    doc = json.loads(exported.read_text())
    assert exported.name == "candidates_grades.json" and doc["n_graded"] == 3
    assert {g["object_id"]: g["grade"] for g in doc["grades"]} == expected
    imported = CliRunner().invoke(cli, ["gallery", "import-grades", str(exported), str(catalog)])
    assert imported.exit_code == 0, imported.output
    table = read_catalog(catalog)
    assert {int(o): str(g) for o, g in zip(table["OBJECT_ID"], table["GRADE"]) if str(g)} == expected
    assert table.meta["NGRADED"][0] == 3
