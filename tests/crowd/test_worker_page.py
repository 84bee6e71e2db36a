"""A person answers a HIT on the crowd server's worker page, in headless Chromium.

The requester side (match's crowd service) creates a real task for a pair of real
photos served from loopback; the HIT carries its gold pair beside it. A person signs in
with a worker token, accepts the HIT, sees both pairs, answers each with the right label
(the test reads which pair is which from the form's ``data-pair`` keys, as a person
would from the pictures), and submits. Simulated workers fill the other assignments. The
person's answer must come back through ListAssignmentsForHIT as MTurk's
``QuestionFormAnswers``, count as a vote (right gold), earn the bonus, and the task must
complete with the right verdict.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from match.crowd import tasks as T
from match.crowd.mturk import parse_answer
from match.crowd.server import create_worker
from tests.conftest import ImageServer
from tests.crowd.harness import CrowdHarness
from tests.web.test_browser import _chrome

pytestmark = pytest.mark.browser

FN = "image-similarity"



@pytest.fixture
def harness(tmp_path: Path) -> Iterator[CrowdHarness]:
    h = CrowdHarness(tmp_path / "crowd")
    yield h
    h.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    driver = _chrome(tmp_path / "profile")
    yield driver
    driver.quit()


def _half(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        small = image.convert("RGB").resize((image.width // 2, image.height // 2))
        out = io.BytesIO()
        small.save(out, "JPEG", quality=70)
        return out.getvalue()


def test_a_person_takes_a_hit_answers_and_completes_the_task(
        harness: CrowdHarness, browser: Any, image_server: ImageServer, photo_paths: list[Path],
        tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo, other = photo_paths[3].read_bytes(), photo_paths[40].read_bytes()
    query = image_server.put("worker/query.jpg", _half(photo))
    match = image_server.put("worker/match.jpg", photo)
    gold_a = image_server.put("worker/gold-a.jpg", photo)
    gold_b = image_server.put("worker/gold-b.jpg", other)
    gold_id = harness.service.add_gold(gold_a, gold_b, "different")
    harness.label(query, match, "edited")  # for the simulated workers who fill the rest
    harness.service.put_task(FN, "by-a-person", {"input": {"image1": {"url": query},
                                                           "image2": {"url": match}}})
    real_key = T.pair_id("p", query, match)

    account = create_worker(harness.root / "server", "reviewer")
    wait = WebDriverWait(browser, 30)
    browser.get(f"{harness.url}worker")
    browser.find_element(By.ID, "token").send_keys(account.token)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    accept = wait.until(lambda d: d.find_element(By.XPATH, "//button[normalize-space()='Accept']"))
    accept.click()

    frame = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "iframe[title=HIT]"))
    browser.switch_to.frame(frame)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[type=radio]"))
    images = browser.find_elements(By.TAG_NAME, "img")
    assert {image.get_attribute("src") for image in images} >= {query, match, gold_a, gold_b}
    wait.until(lambda d: all(d.execute_script("return arguments[0].naturalWidth", image) > 0
                             for image in images))  # the person really sees the photos
    browser.find_element(By.CSS_SELECTOR, f"input[data-pair='{real_key}'][value='edited']").click()
    browser.find_element(By.CSS_SELECTOR, f"input[data-pair='{gold_id}'][value='different']").click()
    browser.switch_to.default_content()
    screenshots = Path(os.environ.get("MATCH_SCREENSHOTS", tmp_path))
    screenshots.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(screenshots / "worker-task.png"))
    browser.switch_to.frame(frame)
    browser.find_element(By.CSS_SELECTOR, "[type=submit]").click()
    # The thank-you page replaces the HIT inside its frame, as on MTurk.
    wait.until(lambda d: "your work is submitted" in d.page_source.lower())
    browser.switch_to.default_content()

    # The answer, as MTurk returns it, reaches the requester side.
    (hit,) = harness.service.turk.list_hits()
    (assignment,) = harness.turk_call("ListAssignmentsForHIT", HITId=hit["HITId"])["Assignments"]
    assert assignment["WorkerId"] == account.worker_id
    parsed = parse_answer(assignment["Answer"])
    assert parsed[f"q_{real_key}"] == "edited" and parsed[f"q_{gold_id}"] == "different", parsed

    harness.run()  # simulated workers take the other assignments; sync adjudicates and pays
    task = harness.service.get_task(FN, "by-a-person", sync=False)
    assert task["state"] == "completed" and task["result"]["match"] is True
    mine = [a for a in harness.service.state.assignments() if a["worker_id"] == account.worker_id]
    assert len(mine) == 1 and mine[0]["gold_ok"] and mine[0]["counted"]
    paid = {b["assignment_id"] for b in harness.service.state.bonuses(state="paid")}
    assert mine[0]["assignment_id"] in paid
