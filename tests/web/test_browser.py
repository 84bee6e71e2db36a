"""The web UI in a real browser: Debian's headless Chromium driven by Selenium.

The match app runs for real on a loopback port (werkzeug, threaded, in this process so
the test can point it at an in-process crowd server with simulated workers), over a
fresh embedded store, with real photographs (tests/photos.py). The browser does what a
person does: uploads photos, searches with an edited copy, moves the cutoff slider with
the keyboard, drops a file, pages through the index, deletes with confirmation,
compares two images, sends matches to the crowd and reads the dashboard. Checks look
at what a person would see: the first result is the right photo and its thumbnail has
pixels (``naturalWidth > 0``), the score is visible text, nothing overflows a 390 px
phone screen, images have alt text and fields have labels. Screenshots are written to
``$MATCH_SCREENSHOTS`` (default: a pytest temp dir, printed) for a person to look at.

Chromium and chromedriver are Debian's (``apt-get install -y chromium chromium-driver``);
nothing is downloaded. A missing browser is a failure, not a skip.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from match import config as match_config
from match.app import close_store, create_app
from tests.conftest import ImageServer
from tests.test_e2e import free_port, resized_copy

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PHOTOS = 30
DUMMY_AWS = {"AWS_ACCESS_KEY_ID": "AKIDMATCHTEST", "AWS_SECRET_ACCESS_KEY": "not-a-secret",
             "AWS_DEFAULT_REGION": "us-east-1"}


class _Quiet(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


def _serve(app: Any) -> tuple[BaseWSGIServer, threading.Thread]:
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


@dataclass
class Site:
    """The running match app, its crowd, the browser and where screenshots go."""

    url: str
    app: Any
    driver: Any
    shots: Path
    photos: list[Path]
    work: Path
    crowd_work: Callable[[], int]
    truth: dict[str, str]
    spare: list[Path]  # photos not uploaded by the add test

    def get(self, path: str) -> None:
        self.driver.get(self.url + path)

    def count(self) -> int:
        return int(requests.get(self.url + "/count", timeout=10).json()["result"][0])

    def shot(self, name: str) -> Path:
        """A screenshot of the whole page (not only the viewport)."""
        import base64

        path = self.shots / f"{name}.png"
        size = self.js("const e = document.documentElement; return [e.scrollWidth, e.scrollHeight];")
        width = self.js("return window.innerWidth;")
        shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": max(width, size[0]), "height": min(size[1], 6000), "scale": 1}})
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def wait(self, condition: Callable[[Any], Any], timeout: float = 20.0, message: str = "") -> Any:
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.support.ui import WebDriverWait

        # A page being replaced makes element look-ups fail for a moment: keep polling.
        return WebDriverWait(self.driver, timeout, poll_frequency=0.1,
                             ignored_exceptions=(WebDriverException,)).until(condition, message)

    def css(self, selector: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def all(self, selector: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, selector))

    def image_shown(self, element: Any) -> bool:
        """The image has loaded real pixels and takes up room on the page."""
        return bool(self.js("const i = arguments[0]; return i.complete && i.naturalWidth > 0 && "
                            "i.getBoundingClientRect().width > 20;", element))

    def phone(self, on: bool) -> None:
        if on:
            self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                        {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True})
        else:
            self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

    def fits(self) -> bool:
        return bool(self.js("return document.documentElement.scrollWidth <= window.innerWidth;"))

    def accessibility_problems(self) -> list[str]:
        """Images without alt, fields without a label, buttons and links without a name."""
        return list(self.js("""
            const problems = [];
            for (const img of document.querySelectorAll('img')) {
              if (!img.hasAttribute('alt')) problems.push('img without alt: ' + img.src.slice(0, 60));
              else if (!img.hidden && img.alt.trim() === '') problems.push('visible img with empty alt');
            }
            for (const field of document.querySelectorAll('input, select, textarea')) {
              if (field.type === 'hidden') continue;
              const named = (field.labels && field.labels.length) || field.getAttribute('aria-label')
                            || field.getAttribute('aria-labelledby');
              if (!named) problems.push('field without label: ' + (field.name || field.id));
            }
            for (const el of document.querySelectorAll('button, a[href]')) {
              const name = el.textContent.trim() || el.getAttribute('aria-label');
              if (!name) problems.push('unnamed ' + el.tagName);
            }
            if (!document.documentElement.lang) problems.push('no lang on html');
            if (document.querySelectorAll('h1').length !== 1) problems.push('not exactly one h1');
            return problems;"""))


def _chrome(profile: Path) -> Any:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.fail(f"{path} is missing: apt-get install -y chromium chromium-driver "
                        "(browser tests fail rather than skip when it is absent)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,900", "--lang=en-US",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    return driver


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, photo_paths: list[Path],
         image_server: ImageServer) -> Iterator[Site]:
    from match.crowd.server import create_crowd_app, crowd_store
    from match.crowd.store import CrowdState
    from match.crowd.workers import SimulatedCrowd, SimulationSettings

    work = tmp_path_factory.mktemp("web-browser")
    shots = Path(os.environ.get("MATCH_SCREENSHOTS") or work / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {shots}")
    patch = pytest.MonkeyPatch()
    for key, value in DUMMY_AWS.items():
        patch.setenv(key, value)

    crowd_app = create_crowd_app(work / "crowd-server")
    crowd_server, _ = _serve(crowd_app)
    port = free_port()
    data_dir = work / "data"
    settings = {"MATCH_DATA_DIR": str(data_dir), "MATCH_STORE": "local",
                "MATCH_FETCH_ALLOW_NETWORKS": "127.0.0.0/8",
                "MATCH_CROWD_ENDPOINT": f"http://127.0.0.1:{crowd_server.server_port}/",
                "MATCH_CROWD_PUBLIC_URL": f"http://127.0.0.1:{port}", "MATCH_CROWD_SECRET": "browser-test"}
    app = create_app(match_config.load(settings, environ={}))
    server = make_server("127.0.0.1", port, app, threaded=True, request_handler=_Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    truth: dict[str, str] = {}  # candidate URL -> label, for the simulated workers
    state = CrowdState(data_dir)

    def oracle(pair_key: str, html: str) -> str | None:
        for gold in state.gold():
            if gold["gold_id"] == pair_key:
                return str(gold["label"])
        for url, label in truth.items():
            if url in html:
                return label
        return None

    simulation = SimulationSettings(workers=6, accuracy=1.0, latency=0, seed=3)
    crowd = SimulatedCrowd(crowd_store(crowd_app), simulation, oracle=oracle)
    driver = _chrome(work / "profile")
    try:
        yield Site(f"http://127.0.0.1:{port}", app, driver, shots, photo_paths[:PHOTOS], work,
                   crowd.run_until_idle, truth, photo_paths[PHOTOS + 10:PHOTOS + 13])
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()
        crowd_server.shutdown()
        crowd_server.server_close()
        state.close()
        crowd_store(crowd_app).close()
        close_store(app)
        patch.undo()


@pytest.fixture(scope="module")
def indexed(site: Site) -> list[Path]:
    """The photos, uploaded through the browse page's add form (several files at once)."""
    site.get("/ui/browse")
    assert "The index is empty" in site.css("main").text
    site.css("#add-image").send_keys("\n".join(str(p) for p in site.photos))
    site.css("details.add button[type=submit]").click()
    site.wait(lambda d: "Added" in site.css("main").text, 120, "the add did not finish")
    assert f"Added {PHOTOS} images." in site.css("[role=status]").text
    assert site.count() == PHOTOS
    return site.photos


def _results(site: Site) -> list[Any]:
    site.wait(lambda d: site.all("[data-results]"), 30, "no results section")
    return site.all("[data-results] .hit")


def _wait_thumb(site: Site, element: Any) -> None:
    site.wait(lambda d: site.image_shown(element), 10, "a thumbnail did not render")


def test_upload_then_search_shows_the_right_photo_first(site: Site, indexed: list[Path]) -> None:
    target = indexed[7]
    query = site.work / "query-edited.jpg"
    query.write_bytes(resized_copy(target.read_bytes()))
    site.get("/ui/")
    site.css("#image").send_keys(str(query))
    site.wait(lambda d: site.image_shown(site.css("[data-drop] img.preview")), 10, "no preview of the file")
    site.css("button.primary").click()
    hits = _results(site)
    assert hits, site.css("main").text
    first = hits[0]
    assert first.find_element("css selector", ".path").text == target.name
    _wait_thumb(site, first.find_element("css selector", "img.thumb"))
    score = first.find_element("css selector", ".score strong")
    assert score.is_displayed() and 55 < float(score.text) < 100
    assert site.image_shown(site.css("figure.query img"))
    assert re.fullmatch(r"[0-9a-f]{32}", site.css("input[name=q]").get_attribute("value"))
    assert site.accessibility_problems() == []
    site.shot("01-search-results")


def test_cutoff_slider_filters_at_once_and_searches_again(site: Site, indexed: list[Path]) -> None:
    from selenium.webdriver.common.keys import Keys

    assert _results(site), "runs after the search test, on its results page"
    before = len(_results(site))
    slider = site.css("#cutoff")
    slider.send_keys(Keys.HOME)  # the keyboard moves it, as a person without a mouse does
    assert site.css("[data-cutoff-value]").text == "0.00"
    assert site.css("[data-min-score]").text == "100"
    site.wait(lambda d: "cutoff=0&" in d.current_url or "cutoff=0.00" in d.current_url
              or re.search(r"cutoff=0(&|$)", d.current_url), 10, "the page did not search again at cutoff 0")
    # No signature is within distance 0 of an edited copy; what stays is what local
    # features confirm, whatever the cutoff: the photo itself.
    site.wait(lambda d: all(hit.get_attribute("data-found-by") == "features"
                            for hit in site.all("[data-results] .hit:not(.filtered)")),
              10, "a signature hit beyond distance 0 stayed visible")
    site.wait(lambda d: "confirmed by local features" in site.css("[data-results] h2").text, 10)
    left = [hit.find_element("css selector", ".path").text for hit in site.all("[data-results] .hit")]
    assert left and left[0] == indexed[7].name
    slider = site.css("#cutoff")
    slider.send_keys(Keys.END)
    site.wait(lambda d: re.search(r"cutoff=1(&|$)", d.current_url), 10, "no search again at cutoff 1")
    site.wait(lambda d: len(site.all("[data-results] .hit")) >= before, 10)
    # Every signature is within distance 1, but past MATCH_SURE_DISTANCE a hit is shown
    # only when local features confirm it: the look-alikes stay out.
    sure = float(site.app.config["MATCH_SURE_DISTANCE"])
    hits = site.all("[data-results] .hit")
    assert hits[0].find_element("css selector", ".path").text == indexed[7].name
    for hit in hits:
        found_by, distance = hit.get_attribute("data-found-by"), float(hit.get_attribute("data-distance"))
        assert "features" in found_by.split() or distance <= sure, (found_by, distance)
    site.shot("02-slider-at-1")


def test_a_crop_is_found_and_its_region_outlined_on_the_thumbnail(site: Site, indexed: list[Path]) -> None:
    from PIL import Image

    target = indexed[9]
    query = site.work / "query-crop.jpg"
    with Image.open(target) as image:  # keep 70% of each side, off-centre
        width, height = image.size
        box = (round(.05 * width), round(.25 * height), round(.75 * width), round(.95 * height))
        image.convert("RGB").crop(box).save(query, quality=90)
    site.get("/ui/")
    site.css("#image").send_keys(str(query))
    site.css("button.primary").click()
    hits = _results(site)
    assert hits and hits[0].find_element("css selector", ".path").text == target.name
    first = hits[0]
    assert "local features" in first.find_element("css selector", ".found-by").text
    thumb = first.find_element("css selector", ".shown img.thumb")
    _wait_thumb(site, thumb)
    # Where the outline is on screen, against where the crop is in the letterboxed
    # thumbnail (object-fit: contain): within 2% of the picture's size.
    placed = site.js("""
        const img = arguments[0], rect = arguments[1].getBoundingClientRect();
        const b = img.getBoundingClientRect();
        const s = Math.min(b.width / img.naturalWidth, b.height / img.naturalHeight);
        const w = img.naturalWidth * s, h = img.naturalHeight * s;
        const left = b.left + (b.width - w) / 2, top = b.top + (b.height - h) / 2;
        return [(rect.left - left) / w, (rect.top - top) / h,
                (rect.right - left) / w, (rect.bottom - top) / h];
        """, thumb, first.find_element("css selector", "svg.region rect.line"))
    for got, want in zip(placed, (.05, .25, .75, .95), strict=True):
        assert abs(got - want) < .02, (placed, "the outline is not where the crop is")
    site.shot("02b-crop-region")


def test_drop_an_image_on_the_search_form(site: Site, indexed: list[Path]) -> None:
    target = indexed[12]
    sha = hashlib.sha256(target.read_bytes()).hexdigest()
    site.get("/ui/")
    dropped = site.driver.execute_async_script("""
        const [url, done] = arguments;
        fetch(url).then(r => r.blob()).then(blob => {
          const file = new File([blob], 'dropped.jpg', {type: 'image/jpeg'});
          const zone = document.querySelector('[data-drop]');
          const transfer = new DataTransfer();
          transfer.items.add(file);
          for (const type of ['dragenter', 'dragover', 'drop']) {
            const init = {bubbles: true, cancelable: true, dataTransfer: transfer};
            zone.dispatchEvent(new DragEvent(type, init));
          }
          done(document.querySelector('#image').files.length);
        }).catch(e => done(String(e)));""", f"/ui/thumbs/{sha}.jpg")
    assert dropped == 1
    site.wait(lambda d: site.image_shown(site.css("[data-drop] img.preview")), 10, "no preview of the drop")
    site.shot("03-dropped")
    site.css("button.primary").click()
    hits = _results(site)
    assert hits and hits[0].find_element("css selector", ".path").text == target.name


def test_browse_paginates_and_deletes_after_confirmation(site: Site, indexed: list[Path]) -> None:
    from selenium.webdriver.common.keys import Keys

    site.get("/ui/browse")
    assert len(site.all("li.entry")) == 24 and "Page 1 of 2" in site.css(".pager").text
    for image in site.all("li.entry img.thumb")[:4]:
        _wait_thumb(site, image)
    site.shot("04-browse-page-1")
    site.css(".pager a[rel=next]").click()
    site.wait(lambda d: "Page 2 of 2" in site.css(".pager").text)
    entries = site.all("li.entry")
    assert len(entries) == PHOTOS - 24
    victim = entries[0].find_element("css selector", ".path").text
    entries[0].find_element("css selector", "a.danger").click()
    site.wait(lambda d: "Delete this image from the index?" in site.css("h1").text)
    _wait_thumb(site, site.css(".confirm img.thumb"))
    assert victim in site.css(".confirm").text
    site.shot("05-confirm-delete")
    site.css(".confirm a.button").click()  # Cancel
    site.wait(lambda d: "Page 2 of 2" in site.css(".pager").text)
    assert site.count() == PHOTOS
    site.all("li.entry")[0].find_element("css selector", "a.danger").click()
    site.wait(lambda d: "Delete this image from the index?" in site.css("h1").text)
    active = site.driver.switch_to.active_element
    assert active.text == "Delete"  # the button has the focus: Enter deletes
    active.send_keys(Keys.ENTER)
    site.wait(lambda d: "Deleted" in site.css("main").text)
    assert victim in site.css("[role=status]").text
    assert site.count() == PHOTOS - 1
    assert victim not in [e.text for e in site.all("li.entry .path")]
    assert "29 images" in site.css("h1").text


def test_compare_shows_both_images_side_by_side(site: Site, indexed: list[Path]) -> None:
    original = indexed[3]
    copy = site.work / "copy.jpg"
    copy.write_bytes(resized_copy(original.read_bytes()))
    site.get("/ui/compare")
    site.css("#image1").send_keys(str(original))
    site.css("#image2").send_keys(str(copy))
    site.css("button.primary").click()
    site.wait(lambda d: site.all("[data-score]"), 30)
    assert float(site.css("[data-score]").text) > 55
    assert "the same image" in site.css(".compare-result").text
    left, right = site.all(".compare-result .pair img")
    assert site.image_shown(left) and site.image_shown(right)
    assert left.rect["y"] == right.rect["y"] and left.rect["x"] < right.rect["x"]
    assert site.accessibility_problems() == []
    site.shot("06-compare")
    # A crop of the middle against the whole: the region is outlined on the second image.
    from PIL import Image

    crop = site.work / "compare-crop.jpg"
    with Image.open(original) as image:
        width, height = image.size
        image.convert("RGB").crop((round(.2 * width), round(.2 * height), round(.8 * width),
                                   round(.8 * height))).save(crop, quality=90)
    site.get("/ui/compare")
    site.css("#image1").send_keys(str(crop))
    site.css("#image2").send_keys(str(original))
    site.css("button.primary").click()
    site.wait(lambda d: site.all("[data-score]"), 30)
    assert "Local features confirm it" in site.css(".compare-result").text
    right = site.all(".compare-result .pair img")[1]
    outline = site.css(".compare-result svg.region rect.line")
    placed = site.js("""
        const img = arguments[0], rect = arguments[1].getBoundingClientRect();
        const b = img.getBoundingClientRect();
        const s = Math.min(b.width / img.naturalWidth, b.height / img.naturalHeight);
        const w = img.naturalWidth * s, h = img.naturalHeight * s;
        const left = b.left + (b.width - w) / 2, top = b.top + (b.height - h) / 2;
        return [(rect.left - left) / w, (rect.top - top) / h,
                (rect.right - left) / w, (rect.bottom - top) / h];
        """, right, outline)
    for got, want in zip(placed, (.2, .2, .8, .8), strict=True):
        assert abs(got - want) < .02, (placed, "the outline is not where the crop is")
    assert site.accessibility_problems() == []
    site.shot("06b-compare-crop")


def test_phone_layout_does_not_overflow(site: Site, indexed: list[Path]) -> None:
    site.phone(True)
    try:
        pages = {"08-phone-search": "/ui/", "09-phone-browse": "/ui/browse",
                 "10-phone-compare": "/ui/compare", "11-phone-crowd": "/ui/crowd"}
        for name, path in pages.items():
            site.get(path)
            assert site.js("return window.innerWidth") == 390
            assert site.fits(), f"{path} is wider than a 390 px phone screen"
            assert site.css("nav").is_displayed()
            site.shot(name)
        # A results page, with a long filepath and metadata.
        query = site.work / "phone-query.jpg"
        query.write_bytes(resized_copy(indexed[5].read_bytes()))
        site.get("/ui/")
        site.css("#image").send_keys(str(query))
        site.css("button.primary").click()
        hits = _results(site)
        _wait_thumb(site, hits[0].find_element("css selector", "img.thumb"))
        hits[0].find_element("css selector", "details.meta summary").click()
        assert site.fits(), "the results page is wider than a 390 px phone screen"
        site.shot("12-phone-results")
        site.get("/ui/browse/delete?filepath=" + indexed[10].name)
        assert site.fits()
        site.shot("13-phone-confirm")
    finally:
        site.phone(False)


def test_send_matches_to_the_crowd_and_read_the_dashboard(site: Site, image_server: ImageServer,
                                                         indexed: list[Path]) -> None:
    # Workers need URLs: an index of three photos added by URL through the add form (the
    # photos uploaded before go, through the API), so a search's top 3 are all verifiable.
    for filepath in requests.get(site.url + "/list", params={"limit": 1000}, timeout=10).json()["result"]:
        gone = requests.delete(site.url + "/delete", data={"filepath": filepath}, timeout=10)
        assert gone.status_code == 200
    urls = []
    for photo in site.spare:
        url = image_server.put(f"web-{photo.name}", photo.read_bytes())
        site.get("/ui/browse")
        if not site.css("details.add").get_attribute("open"):
            site.css("details.add summary").click()
        site.css("#add-url").send_keys(url)
        site.css("details.add button[type=submit]").click()
        site.wait(lambda d: "Added 1 image." in site.css("main").text, 30)
        urls.append(url)
    site.truth.update({urls[0]: "same", urls[1]: "different", urls[2]: "different"})
    query = site.work / "crowd-query.jpg"
    query.write_bytes(resized_copy(site.spare[0].read_bytes()))
    # The two other photos are distinct look-alikes at best: local features rightly do
    # not confirm them, so they are reported only with every signature hit within the
    # cutoff taken as sure (MATCH_SURE_DISTANCE = 1), as before local features.
    sure = site.app.config["MATCH_SURE_DISTANCE"]
    site.app.config["MATCH_SURE_DISTANCE"] = 1.0
    try:
        site.get("/ui/")
        site.css("#image").send_keys(str(query))
        site.js("const s = document.querySelector('#cutoff'); s.value = '1';"
                "s.dispatchEvent(new Event('input'));")
        site.css("button.primary").click()
        hits = _results(site)
        paths = [h.find_element("css selector", ".path").text for h in hits]
        assert paths[0] == urls[0]
        from selenium.webdriver.support.ui import Select

        Select(site.css("#top")).select_by_value("3")
        site.css(".crowd-form button").click()
        site.wait(lambda d: "sent to the crowd" in site.css("main").text, 60)
    finally:
        site.app.config["MATCH_SURE_DISTANCE"] = sure
    notice = site.css("#crowd").text
    sent = int(re.search(r"(\d+) pairs? sent", notice).group(1))  # type: ignore[union-attr]
    assert sent == len(urls)  # cutoff 1, top 3: every indexed photo is a match

    site.get("/ui/crowd")
    for _ in range(15):
        site.crowd_work()
        site.css("form[action$='/ui/crowd/sync'] button").click()
        site.wait(lambda d: "Synced:" in site.css("main").text, 60)
        if "processing" not in site.css("[aria-labelledby=pairs-title]").text.lower():
            break
    else:
        pytest.fail("crowd tasks did not complete: " + site.css("main").text[:2000])
    cards = site.all("li.pair-card")
    assert len(cards) == sent
    completed = [c for c in cards if "completed" in c.find_element("css selector", ".badge").text]
    assert completed, site.css("main").text[:2000]
    same = [c for c in cards if urls[0] in site.js("return arguments[0].innerHTML", c)]
    assert same and "same" in same[0].text and "Votes:" in same[0].text
    for image in same[0].find_elements("css selector", ".pair img"):
        _wait_thumb(site, image)
    cost = site.css("[data-stat=cost]").text
    assert re.match(r"\$\d+\.\d\d", cost) and not cost.startswith("$0.00"), cost
    rows = site.all("[aria-labelledby=workers-title] tbody tr")
    assert rows and re.search(r"\d+%", rows[0].text), site.css("main").text[:2000]
    assert site.all("svg circle.dot.same"), "the calibration plot shows no 'same' point"
    assert site.all("svg rect.dot.different") and site.all("[data-best-cutoff]")
    assert site.accessibility_problems() == []
    site.shot("07-crowd-dashboard")
    site.phone(True)
    try:
        site.driver.refresh()
        assert site.fits(), "the crowd dashboard is wider than a 390 px phone screen"
        site.shot("14-phone-crowd-dashboard")
    finally:
        site.phone(False)
    # A search for the same image now shows the crowd's verdict next to the match.
    site.get("/ui/")
    site.css("#image").send_keys(str(query))
    site.css("button.primary").click()
    hits = _results(site)
    assert "Crowd: same" in hits[0].text, hits[0].text


def test_keyboard_reaches_the_form_and_skip_link(site: Site) -> None:
    from selenium.webdriver.common.keys import Keys

    site.get("/ui/")
    body = site.css("body")
    body.send_keys(Keys.TAB)
    first = site.driver.switch_to.active_element
    assert first.text == "Skip to content" and first.is_displayed()
    first.send_keys(Keys.ENTER)
    assert site.driver.current_url.endswith("#main")
    # Focus is visible: an outline is drawn on the focused control.
    site.css("#url").click()
    outline = site.js("return getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"
    contrast = site.js("""
        function lum(c) { const v = c.match(/\\d+(\\.\\d+)?/g).slice(0, 3).map(Number).map(x => {
            x /= 255; return x <= 0.03928 ? x / 12.92 : Math.pow((x + 0.055) / 1.055, 2.4); });
          return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2]; }
        const fg = lum(getComputedStyle(document.querySelector('.hint')).color);
        const bg = lum(getComputedStyle(document.querySelector('.card')).backgroundColor);
        return (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);""")
    assert contrast >= 4.5, f"hint text contrast {contrast:.2f}:1 is under WCAG AA"


def test_screenshots_were_taken(site: Site) -> None:
    shots = sorted(site.shots.glob("*.png"))
    assert len(shots) >= 10, shots
    assert all(path.stat().st_size > 5_000 for path in shots)
