"""The web page at ``GET /`` in a real browser: Playwright drives Debian's chromium-headless-shell.

``make setup`` installs the browser; without it these tests fail (set MMFUSE_SKIP_BROWSER=1 to
skip them on purpose). One browser serves the whole module and each test gets a fresh context,
so no key or result leaks from one test into the next.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

if os.environ.get("MMFUSE_SKIP_BROWSER") == "1":
    pytest.skip("MMFUSE_SKIP_BROWSER=1", allow_module_level=True)
pytest.importorskip("fastapi", reason="the serve extra is not installed")

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402

BROWSERS = (Path("/usr/lib/chromium/chromium-headless-shell"),
            Path("/usr/bin/chromium-headless-shell"), Path("/usr/lib/chromium/chromium"))
API_KEY = "page-test-key"
TIMEOUT_MS = 15_000  # a prediction on a loaded 2-core machine takes well under a second
expect.set_options(timeout=TIMEOUT_MS)


def chromium_executable() -> Path:
    """The first Debian Chromium found, else a failure that says how to install one."""
    for path in BROWSERS:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    pytest.fail(f"no Chromium found at {', '.join(map(str, BROWSERS))}; run `make setup` (it "
                "installs Debian's chromium-headless-shell), or set MMFUSE_SKIP_BROWSER=1 to "
                "skip the page tests", pytrace=False)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = chromium_executable()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(executable))
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh context per test (its own sessionStorage, so no API key carries over)."""
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    yield context.new_page()
    context.close()


@pytest.fixture(scope="module")
def keyed_server(served_run) -> Iterator[str]:
    """A second server over the same run that requires ``Authorization: Bearer API_KEY``."""
    from serving import start_server, stop_server

    process, url = start_server([str(served_run["run"]), "--api-key", API_KEY])
    yield url
    stop_server(process)


@pytest.fixture(scope="module")
def example(served_run) -> dict:
    """The first test row and what the Python API predicts for it."""
    import mmfuse

    with open(served_run["test"], newline="", encoding="utf-8") as f:
        row = next(csv.DictReader(f))
    image = served_run["data"] / row["image"]
    model = mmfuse.Model.load(served_run["run"])
    expected = model.predict([{"image": str(image), "question": row["question"]}])[0]["answer"]
    return {"image": image, "question": row["question"], "expected": expected}


def predict(page: Page, image: Path | dict, question: str) -> None:
    """Fill the form, press Predict and wait until the page has shown an answer or an error."""
    page.set_input_files("#in-image", image)
    page.fill("#in-question", question)
    with page.expect_response("**/v1/predict"):
        page.click("#predict")
    expect(page.locator("#predict")).to_be_enabled()  # re-enabled once the answer is shown


def read_bars(page: Page, output: str) -> list[dict]:
    """Per bar row, in page order: label, aria-valuenow, shown percentage and fill fraction."""
    return page.eval_on_selector_all(f'.output[data-output="{output}"] .bar-row', """rows =>
        rows.map((row) => {
            const bar = row.querySelector('.bar[role=meter]');
            return {label: row.querySelector('.label').textContent,
                    value: Number(bar.getAttribute('aria-valuenow')),
                    shown: row.querySelector('.num').textContent,
                    fill: bar.firstElementChild.getBoundingClientRect().width
                          / bar.getBoundingClientRect().width};
        })""")


def test_prediction_matches_the_python_api(page: Page, live_server: str, example: dict):
    page.goto(live_server)
    predict(page, example["image"], example["question"])
    block = page.locator('#results .output[data-output="answer"]')
    expect(block).to_be_visible()
    expected = example["expected"]
    assert block.locator(".prediction").inner_text() == expected["prediction"]

    bars = read_bars(page, "answer")
    assert {b["label"] for b in bars} == set(expected["probabilities"])
    for bar in bars:
        p = expected["probabilities"][bar["label"]]
        assert bar["value"] == pytest.approx(p, abs=1e-6)
        assert bar["shown"].endswith("%")
        assert float(bar["shown"][:-1]) == pytest.approx(100 * p, abs=0.05 + 1e-9), bar
        assert bar["fill"] == pytest.approx(p, abs=0.01), bar  # the width is p of the track
    values = [b["value"] for b in bars]
    assert values == sorted(values, reverse=True), "bars are not ordered highest first"
    assert bars[0]["label"] == expected["prediction"]


def test_bars_are_ranked_by_probability_whatever_the_labels(page: Page, live_server: str,
                                                          example: dict):
    # JavaScript lists integer-like keys ("2", "10") first and in numeric order, whatever
    # order the server's JSON gives them in; the page must rank them itself
    probabilities = {"10": 0.61, "abc": 0.2, "7": 0.12, "2": 0.07}
    body = {"outputs": {"answer": {"prediction": "10", "probabilities": probabilities}}}
    page.route("**/v1/predict", lambda route: route.fulfill(
        status=200, content_type="application/json", body=json.dumps(body)))
    page.goto(live_server)
    predict(page, example["image"], example["question"])
    expect(page.locator('.output[data-output="answer"] .prediction')).to_have_text("10")
    bars = read_bars(page, "answer")
    assert [b["label"] for b in bars] == ["10", "abc", "7", "2"]
    assert [b["shown"] for b in bars] == ["61.0%", "20.0%", "12.0%", "7.0%"]


def test_a_file_that_is_not_an_image_shows_the_servers_error(page: Page, live_server: str,
                                                            example: dict):
    page.goto(live_server)
    predict(page, example["image"], example["question"])
    expect(page.locator("#results .output")).to_have_count(1)  # to be cleared by the refusal
    fake = {"name": "notes.png", "mimeType": "image/png",
            "buffer": b"these are notes, not pixels\n" * 20}
    with page.expect_response("**/v1/predict") as answer:
        page.set_input_files("#in-image", fake)
        page.click("#predict")
    response = answer.value
    assert 400 <= response.status < 500
    refusal = response.json()["error"]
    assert refusal["field"] == "image"
    error = page.locator("#error")
    expect(error).to_contain_text(refusal["message"])
    assert error.inner_text().startswith("image")
    expect(page.locator("#results")).to_be_hidden()
    assert page.locator("#results .output").count() == 0


def test_an_api_key_is_asked_for_checked_and_sent(page: Page, keyed_server: str, example: dict):
    page.goto(keyed_server)
    expect(page.locator("#key-form")).to_be_visible()
    expect(page.locator("#predict-form")).to_be_hidden()

    page.fill("#api-key", "not-the-key")
    with page.expect_response("**/v1/model") as refused:
        page.click("#key-form button[type=submit]")
    assert refused.value.status == 401
    expect(page.locator("#error")).to_contain_text("API key")
    expect(page.locator("#key-form")).to_be_visible()
    expect(page.locator("#predict-form")).to_be_hidden()

    page.fill("#api-key", API_KEY)
    with page.expect_request("**/v1/model") as sent:
        page.press("#api-key", "Enter")
    assert sent.value.headers["authorization"] == f"Bearer {API_KEY}"
    expect(page.locator("#predict-form")).to_be_visible()
    expect(page.locator("#key-form")).to_be_hidden()
    expect(page.locator("#error")).to_be_empty()

    predict(page, example["image"], example["question"])
    expect(page.locator('.output[data-output="answer"] .prediction')).to_have_text(
        example["expected"]["prediction"])


def test_a_prediction_logs_no_console_errors(page: Page, live_server: str, example: dict):
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console: {m.text}")
            if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
    page.goto(live_server)
    page.wait_for_load_state("networkidle")  # the favicon request, if any, has been answered
    predict(page, example["image"], example["question"])
    expect(page.locator('.output[data-output="answer"] .bar-row')).not_to_have_count(0)
    assert problems == []


def test_a_text_output_shows_its_text_and_beam_hypotheses(page: Page, live_server: str,
                                                         example: dict):
    # what the server answers for a text output decoded with beam search (test_text_cli.py
    # checks that the server does answer this for a captioning model)
    hypotheses = [{"text": "un carré vert", "score": -0.0307},
                  {"text": "un cercle <b>vert</b>", "score": -4.0773}]
    body = {"outputs": {"answer": {"prediction": "un carré vert", "score": -0.0307,
                                   "hypotheses": hypotheses}}}
    page.route("**/v1/predict", lambda route: route.fulfill(
        status=200, content_type="application/json", body=json.dumps(body)))
    page.goto(live_server)
    predict(page, example["image"], example["question"])
    block = page.locator('.output[data-output="answer"]')
    expect(block.locator(".prediction")).to_have_text("un carré vert")
    assert block.locator(".bar-row").count() == 0
    items = block.locator("ol.hypotheses li")
    expect(items).to_have_count(2)
    assert items.locator(".hypothesis").all_inner_texts() == [h["text"] for h in hypotheses]
    assert items.locator(".num").all_inner_texts() == ["-0.031", "-4.077"]


@pytest.fixture(scope="module")
def every_type_page_server(every_type_run) -> Iterator[str]:
    """A server of the model with every input and output type."""
    from serving import start_server, stop_server

    process, url = start_server([str(every_type_run["run"])])
    yield url
    stop_server(process)


def test_every_input_type_has_its_control_and_every_output_its_answer(
        page: Page, every_type_page_server: str, every_type_run):
    import mmfuse

    data = every_type_run["data"]
    page.goto(every_type_page_server)
    # one control per input, by the kind of value it takes
    assert page.get_attribute("#in-image", "type") == "file"
    assert page.get_attribute("#in-image", "accept") == "image/*"
    assert page.get_attribute("#in-sound", "accept") == "audio/*"
    assert page.get_attribute("#in-clip", "accept") == "video/*"
    assert page.get_attribute("#in-weight", "type") == "number"
    assert page.get_attribute("#in-brand", "list") == "values-brand"
    assert page.eval_on_selector_all("#values-brand option", "os => os.map(o => o.value)") == [
        "acme", "globex", "initech", "umbrella"]
    assert page.eval_on_selector("#in-handmade", "e => e.tagName") == "SELECT"
    expect(page.locator("label[for=in-weight] .hint")).to_have_text("(number, required)")

    page.set_input_files("#in-image", data / "img/004.png")
    page.set_input_files("#in-sound", data / "snd/004.wav")
    page.set_input_files("#in-clip", data / "vid/004.mp4")
    page.fill("#in-note", "a green thing")
    page.fill("#in-weight", "6.25")
    page.fill("#in-brand", "globex")
    page.select_option("#in-handmade", "true")
    with page.expect_response("**/v1/predict"):
        page.click("#predict")
    expect(page.locator('.output[data-output="tags"]')).to_be_visible()

    expected = mmfuse.Model.load(every_type_run["run"]).predict([{
        "image": str(data / "img/004.png"), "sound": str(data / "snd/004.wav"),
        "clip": str(data / "vid/004.mp4"), "note": "a green thing", "weight": 6.25,
        "brand": "globex", "handmade": True}])[0]

    def shown(name: str) -> str:
        return page.locator(f'.output[data-output="{name}"] .prediction').inner_text()

    assert float(shown("price")) == pytest.approx(expected["price"]["prediction"], rel=1e-5)
    assert shown("heavy") == expected["heavy"]["prediction"]
    assert shown("tags") == (", ".join(expected["tags"]["prediction"]) or "(none)")
    assert shown("shape") == expected["shape"]["prediction"]
    assert {b["label"] for b in read_bars(page, "heavy")} == {"yes", "no"}
    assert {b["label"] for b in read_bars(page, "tags")} == {"big", "craft", "warm"}
    assert read_bars(page, "price") == []  # a number has no probabilities

    page.fill("#in-weight", "")
    with page.expect_response("**/v1/predict"):
        page.evaluate("document.querySelector('#in-weight').required = false")
        page.click("#predict")
    expect(page.locator("#error")).to_contain_text("weight")
