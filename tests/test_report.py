"""``mmfuse report``: one self-contained HTML file about a trained run.

Three tiny runs share the module: ``served_run`` (image + question -> category), a captioning
run (image + prompt -> text) and an audio + video run (and its audio-only twin, for a model with
one input). The page is read back with the standard library's HTML parser, and opened in
Debian's Chromium through Playwright, as tests/test_serve_page.py does.
"""

from __future__ import annotations

import base64
import copy
import csv
import gc
import io
import json
import os
import re
import wave
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import CAPTIONS, make_shapes_captions, write_table
from media import moving_square, tone, write_audio, write_video
from mmfuse.errors import MmfuseError
from mmfuse.report import write_report
from test_cli import run

BASE_SECTIONS = ["curves", "timing", "data"]
TAIL_SECTIONS = ["importance", "gallery", "config"]


class ReportPage(HTMLParser):
    """What a report holds: sections (id -> heading), contents links, image and audio
    sources, and the gallery's cards."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sections: dict[str, str] = {}
        self.contents: list[str] = []
        self.images: list[str] = []
        self.audio: list[str] = []
        self.cards: list[dict] = []
        self.scripts = 0
        self._heading: str | None = None
        self._strong = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "section":
            self.sections[a["id"]] = ""
            self._heading = a["id"]
        elif tag == "a" and a.get("href", "").startswith("#"):
            self.contents.append(a["href"][1:])
        elif tag == "img":
            self.images.append(a["src"])
        elif tag == "audio":
            self.audio.append(a["src"])
        elif tag in ("script", "link"):
            self.scripts += 1
        elif tag == "div" and a.get("class", "").split()[:1] == ["card"]:
            self.cards.append({"outcome": a["class"].split()[1], "output": a["data-output"],
                               "row": int(a["data-row"]), "predicted": ""})
        self._strong = tag == "strong" and bool(self.cards)

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2":
            self._heading = None
        self._strong = False

    def handle_data(self, data: str) -> None:
        if self._heading is not None and self.lasttag == "h2":
            self.sections[self._heading] += data
        if self._strong:
            self.cards[-1]["predicted"] += data

    def section_text(self, text: str, section: str) -> str:
        """The raw HTML of one section."""
        start = text.index(f'<section id="{section}">')
        return text[start: text.index("</section>", start)]


def decoded_images(sources: list[str]) -> list[tuple[str, tuple[int, int]]]:
    """Every ``data:image/...`` URI decoded (format and size); the format must match the
    URI."""
    images = []
    for src in sources:
        match = re.fullmatch(r"data:image/(png|jpeg);base64,([A-Za-z0-9+/=]+)", src)
        assert match, src[:80]
        raw = base64.b64decode(match.group(2), validate=True)
        with Image.open(io.BytesIO(raw)) as img:
            assert img.format.lower() == match.group(1)
            img.load()
            images.append((img.format, img.size))
    return images


# --- the image + question run (category output)


@pytest.fixture(scope="module")
def relabelled(served_run) -> Path:
    """The served run's test table with two colour answers swapped for another colour, so the
    table surely holds wrong answers beside the right ones."""
    with open(served_run["test"], newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    colour_rows = [r for r in rows if r["qtype"] == "colour"][:2]
    swap = {"red": "green", "green": "blue", "blue": "red"}
    for r in colour_rows:
        r["answer"] = swap[r["answer"]]
    return write_table(served_run["data"] / "relabelled.csv", rows)


@pytest.fixture(scope="module")
def served_report(served_run, relabelled, tmp_path_factory) -> dict:
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    def live_figures() -> int:
        gc.collect()
        return sum(type(o) is Figure for o in gc.get_objects())

    figures, alive = plt.get_fignums(), live_figures()
    out = tmp_path_factory.mktemp("report") / "nested" / "served.html"
    summary = write_report(served_run["run"], out, relabelled, by="qtype")
    text = out.read_text(encoding="utf-8")
    assert plt.get_fignums() == figures  # no figure left open in pyplot's registry
    assert live_figures() == alive  # nor anywhere else: memory does not grow per report
    return {"summary": summary, "out": out, "text": text, "page": ReportPage(text),
            "table": relabelled}


def test_sections_contents_and_summary(served_report):
    page, summary = served_report["page"], served_report["summary"]
    expected = [*BASE_SECTIONS, "output-answer", "groups", *TAIL_SECTIONS]
    assert summary["sections"] == expected
    assert list(page.sections) == expected
    assert page.contents == expected  # the table of contents links every section
    assert page.sections["output-answer"] == "Output answer (category)"
    assert all(page.sections.values())  # every section has its <h2>
    assert summary["rows"] == 40
    assert summary["out"] == str(served_report["out"])
    assert summary["bytes"] == served_report["out"].stat().st_size


def test_self_contained_with_valid_inline_images_and_small(served_report):
    page, text = served_report["page"], served_report["text"]
    assert page.scripts == 0
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", text)  # nothing fetched
    images = decoded_images(page.images)
    pngs = [size for kind, size in images if kind == "PNG"]
    thumbs = [size for kind, size in images if kind == "JPEG"]
    assert len(pngs) >= 6  # curves, labels, confusion, precision/recall, reliability, ...
    assert thumbs and all(max(size) <= 96 for size in thumbs)
    assert served_report["summary"]["bytes"] < 1_500_000


def test_category_section_states_what_it_shows(served_report, served_run):
    import mmfuse

    text = served_report["page"].section_text(served_report["text"], "output-answer")
    evaluation = mmfuse.Model.load(served_run["run"]).evaluate(served_report["table"])
    accuracy = evaluation["outputs"]["answer"]["accuracy"]
    assert f"accuracy {accuracy:.4f}" in text
    assert "All 6 classes." in text or "most frequent" in text
    assert re.search(r"Expected calibration error \(ECE\) over 10 confidence bins: 0\.\d{4}",
                     text)
    for label in ("red", "green", "blue", "circle", "square", "triangle"):
        assert f"<td>{label}</td>" in text  # the per-class precision / recall table


def test_groups_match_evaluate_by(served_report, served_run):
    import mmfuse

    expected = mmfuse.Model.load(served_run["run"]).evaluate(served_report["table"], by="qtype")
    text = served_report["page"].section_text(served_report["text"], "groups")
    assert served_report["page"].sections["groups"] == "Metrics by qtype"
    for group in ("colour", "shape"):
        values = expected["groups"][group]
        accuracy = values["outputs"]["answer"]["accuracy"]
        assert re.search(rf"<td>{group}</td><td class=\"num\">{values['n']}</td>"
                         rf"<td class=\"num\">{accuracy:.4f}</td>", text), group


def test_gallery_holds_the_most_confident_right_and_wrong(served_report, served_run):
    import mmfuse

    model = mmfuse.Model.load(served_run["run"])
    predictions = model.predict(served_report["table"])
    with open(served_report["table"], newline="", encoding="utf-8") as f:
        truth = [r["answer"] for r in csv.DictReader(f)]
    confidence = [max(p["answer"]["probabilities"].values()) for p in predictions]
    right = [p["answer"]["prediction"] == t for p, t in zip(predictions, truth, strict=True)]
    assert any(right) and not all(right)  # the relabelled rows are answered wrong
    cards = served_report["page"].cards
    for outcome, is_right in (("right", True), ("wrong", False)):
        rows = [c["row"] for c in cards if c["outcome"] == outcome]
        pool = [i for i in range(len(truth)) if right[i] == is_right]
        assert len(rows) == min(6, len(pool))
        assert all(right[i] == is_right for i in rows)
        shown = [confidence[i] for i in rows]
        assert shown == sorted(shown, reverse=True)  # most confident first
        assert min(shown) >= max((confidence[i] for i in pool if i not in rows), default=0)
    for c in cards:
        assert c["predicted"] == predictions[c["row"]]["answer"]["prediction"]
    gallery = served_report["page"].section_text(served_report["text"], "gallery")
    assert "What colour is the shape?" in gallery or "Which shape" in gallery


def test_importance_has_both_inputs(served_report):
    text = served_report["page"].section_text(served_report["text"], "importance")
    assert "<td>image</td>" in text and "<td>question</td>" in text
    assert "drop (accuracy lost)" in text and "permute (accuracy lost)" in text


def test_clear_errors(served_run, tmp_path):
    test = served_run["test"]
    with pytest.raises(MmfuseError, match="no model bundle"):
        write_report(tmp_path, tmp_path / "r.html", test)
    unlabelled = write_table(served_run["data"] / "unlabelled.csv",
                             [{"image": "img/test_0000.png", "question": "What colour?"}])
    with pytest.raises(MmfuseError, match="no column 'answer' for output 'answer'"):
        write_report(served_run["run"], tmp_path / "r.html", unlabelled)
    with pytest.raises(MmfuseError, match="--by 'colour'.*no such column"):
        write_report(served_run["run"], tmp_path / "r.html", test, by="colour")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(MmfuseError, match="cannot create its folder"):
        write_report(served_run["run"], blocker / "r.html", test)
    with pytest.raises(MmfuseError, match="is a folder"):
        write_report(served_run["run"], tmp_path, test)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing half-written


# --- the command line


def test_cli_json_summary_and_validation_split(served_run, tmp_path):
    out = tmp_path / "x.html"
    summary = json.loads(run("report", served_run["run"], "--data", served_run["test"],
                             "--by", "qtype", "--out", out, "--json").stdout)
    assert set(summary) == {"out", "bytes", "sections", "rows"}
    assert summary["bytes"] == out.stat().st_size and summary["rows"] == 40
    assert "groups" in summary["sections"]

    held_out = json.loads((served_run["run"] / "run.json").read_text())["held_out_rows"]
    plain = run("report", served_run["run"], "--out", tmp_path / "valid.html")
    assert "valid.html" in plain.stdout and "sections" in plain.stdout
    page = ReportPage((tmp_path / "valid.html").read_text(encoding="utf-8"))
    assert "groups" not in page.sections
    assert f"({len(held_out)} rows)" in (tmp_path / "valid.html").read_text(encoding="utf-8")

    failed = run("report", tmp_path, "--data", served_run["test"], "--out", out, check=False)
    assert failed.returncode == 2 and "no model bundle" in failed.stderr


# --- a text output


@pytest.fixture(scope="module")
def captions(tmp_path_factory) -> dict:
    import mmfuse

    folder = tmp_path_factory.mktemp("report_captions")
    train = make_shapes_captions(folder / "data", 60, seed=1, name="train.csv")
    test = make_shapes_captions(folder / "data", 12, seed=2, name="test.csv")
    mmfuse.Model.from_config(CAPTIONS).fit(train, out=folder / "run")
    return {"run": folder / "run", "test": test, "folder": folder}


def test_text_output_bleu_by_group_and_examples(captions):
    import mmfuse

    out = captions["folder"] / "captions.html"
    summary = write_report(captions["run"], out, captions["test"], by="prompt")
    text = out.read_text(encoding="utf-8")
    page = ReportPage(text)
    assert summary["sections"] == [*BASE_SECTIONS, "output-caption", "groups", *TAIL_SECTIONS]
    assert page.sections["output-caption"] == "Output caption (text)"
    section = page.section_text(text, "output-caption")
    expected = mmfuse.Model.load(captions["run"]).evaluate(captions["test"], by="prompt")
    assert "BLEU (sacrebleu, 0-100) by prompt" in section
    for prompt, values in expected["groups"].items():
        bleu = values["outputs"]["caption"]["bleu"]
        assert re.search(rf"<td>{re.escape(prompt.replace(chr(39), '&#x27;'))}</td>"
                         rf"<td class=\"num\">{values['n']}</td><td class=\"num\">{bleu:.4f}",
                         section), prompt
    examples = section[section.index("Examples"):]
    assert "<th>reference</th><th>generated</th>" in examples
    assert "a red circle" in examples or "a blue" in examples or "a green" in examples
    assert "un " in examples  # both prompts are among the examples
    decoded_images(page.images)
    assert {c["outcome"] for c in page.cards} <= {"right", "wrong"} and page.cards

    plain = write_report(captions["run"], out, captions["test"])
    assert "Overall BLEU" in out.read_text(encoding="utf-8") and "groups" not in plain["sections"]


# --- audio and video inputs


def make_audio_video(folder: Path, n: int, seed: int, name: str) -> Path:
    """Rows of a WAV tone (the label: its pitch) and an MP4 clip; the last row lacks the clip."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        pitch = ("low", "high")[i % 2]
        sound = f"wav/{name}_{i}.wav"
        write_audio(folder / sound, tone(330.0 if pitch == "low" else 1320.0, 0.5, 22050,
                                         noise=0.02, seed=seed * 100 + i), 22050)
        clip = f"clips/{name}_{i}.mp4"
        write_video(folder / clip, moving_square(5, 32, 48, int(rng.choice([-1, 1]))))
        rows.append({"sound": sound, "clip": "" if i == n - 1 else clip, "label": pitch})
    return write_table(folder / f"{name}.csv", rows)


AUDIO = {"name": "sound", "type": "audio", "preprocess": {"n_mels": 16, "max_seconds": 1.0},
         "encoder": {"type": "audio_cnn", "channels": [8, 8], "dim": 16}}
AUDIO_VIDEO = {
    "inputs": [AUDIO, {"name": "clip", "type": "video", "preprocess": {"size": 16, "frames": 4},
                       "encoder": {"type": "frame_cnn", "channels": [8], "dim": 16}}],
    "fusion": {"type": "concat", "hidden": [16]},
    "outputs": [{"name": "label", "type": "category"}],
    "training": {"epochs": 4, "batch_size": 8, "learning_rate": 0.01, "valid_fraction": 0},
}


@pytest.fixture(scope="module")
def audio_video(tmp_path_factory) -> dict:
    import mmfuse

    folder = tmp_path_factory.mktemp("report_av")
    train = make_audio_video(folder, 16, seed=0, name="train")
    test = make_audio_video(folder, 8, seed=1, name="test")
    runs = {}
    for key, inputs in (("both", AUDIO_VIDEO["inputs"]), ("audio", [AUDIO])):
        config = {**copy.deepcopy(AUDIO_VIDEO), "inputs": copy.deepcopy(inputs)}
        mmfuse.Model.from_config(config).fit(train, out=folder / key)
        runs[key] = write_report(folder / key, folder / f"{key}.html", test)
    return {"folder": folder, "summaries": runs}


def wav_of(src: str) -> tuple[int, int, int, int]:
    """Channels, sample width, rate and frames of a ``data:audio/wav`` URI."""
    assert src.startswith("data:audio/wav;base64,")
    with wave.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1], validate=True))) as w:
        return w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()


def test_audio_players_and_video_posters_in_the_gallery(audio_video):
    text = (audio_video["folder"] / "both.html").read_text(encoding="utf-8")
    page = ReportPage(text)
    gallery = page.section_text(text, "gallery")
    cards = len(page.cards)
    assert cards >= 1
    assert len(page.audio) == cards  # every row has its sound
    for src in page.audio:
        channels, width, rate, frames = wav_of(src)
        assert (channels, width, rate) == (1, 2, 8000)  # mono 16-bit, 16 kHz resampled to 8
        assert 0.4 * rate <= frames <= 0.5 * rate + 1  # the whole 0.5 s tone (under 3 s)
    posters = re.findall(r'<img class="poster" src="([^"]+)"', gallery)
    missing = gallery.count('class="note">missing<')
    assert len(posters) + missing == cards and posters
    assert all(size == (16, 16) for _, size in decoded_images(posters))  # the model's frames
    importance = page.section_text(text, "importance")
    assert "<td>sound</td>" in importance and "<td>clip</td>" in importance


def test_a_model_with_one_input_skips_importance(audio_video):
    summary = audio_video["summaries"]["audio"]
    text = (audio_video["folder"] / "audio.html").read_text(encoding="utf-8")
    assert summary["sections"] == [*BASE_SECTIONS, "output-label", *TAIL_SECTIONS]
    importance = ReportPage(text).section_text(text, "importance")
    assert "one input (sound)" in importance and "<img" not in importance


# --- in a real browser

BROWSERS = (Path("/usr/lib/chromium/chromium-headless-shell"),
            Path("/usr/bin/chromium-headless-shell"), Path("/usr/lib/chromium/chromium"))


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """Debian's Chromium driven by Playwright. ``make setup`` installs both; as in
    test_serve_page.py, a missing one fails (MMFUSE_SKIP_BROWSER=1 skips on purpose)."""
    if os.environ.get("MMFUSE_SKIP_BROWSER") == "1":
        pytest.skip("MMFUSE_SKIP_BROWSER=1")
    import playwright.sync_api as playwright_api

    executable = next((p for p in BROWSERS if p.is_file() and os.access(p, os.X_OK)), None)
    assert executable is not None, (f"no Chromium at {', '.join(map(str, BROWSERS))}: run "
                                    "make setup, or set MMFUSE_SKIP_BROWSER=1 to skip")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(executable))
        yield browser
        browser.close()


@pytest.mark.parametrize("report", ["served", "audio_video"])
def test_report_opens_in_a_browser_without_errors(report, browser, request):
    if report == "served":
        fixture = request.getfixturevalue("served_report")
        path, sections = fixture["out"], fixture["summary"]["sections"]
    else:
        fixture = request.getfixturevalue("audio_video")
        path = fixture["folder"] / "both.html"
        sections = fixture["summaries"]["both"]["sections"]
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.resolve().as_uri(), wait_until="load")
    found = page.eval_on_selector_all(
        "section", "els => els.map(e => [e.id, e.querySelector('h2').textContent])")
    assert [s for s, _ in found] == sections and all(h for _, h in found)
    images = page.evaluate("""() => Array.from(document.images).map(
        i => [i.complete, i.naturalWidth])""")
    assert images and all(done and width > 0 for done, width in images)
    durations = page.evaluate("""() => Promise.all(Array.from(document.querySelectorAll('audio'),
        a => new Promise((ok, fail) => {
            a.onloadedmetadata = () => ok(a.duration);
            a.onerror = () => fail(new Error('audio error ' + a.error.code));
            a.preload = 'metadata'; a.load();
        })))""")
    assert all(0.4 <= d <= 3.0 for d in durations)
    assert (len(durations) > 0) == (report == "audio_video")
    context.close()
    assert errors == []
