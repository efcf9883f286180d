"""The HTTP API in-process: outputs equal ``predict``, and every bad request gets a 4xx."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import threading
import time
import zlib

import numpy as np
import pytest
import yaml
from PIL import Image

from test_cli import run

pytest.importorskip("fastapi", reason="the serve extra is not installed")

from starlette.testclient import TestClient  # noqa: E402

from mmfuse.serve import create_app, load_service  # noqa: E402
from mmfuse.serve.service import Service  # noqa: E402
from mmfuse.serve.settings import Limits, ServeSettings  # noqa: E402

COLOUR_Q, SHAPE_Q = "What colour is the shape?", "Which shape is in the picture?"


def png_bytes(width: int = 32, height: int = 32, colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, "PNG")
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's
    calling card): the IHDR chunk is rewritten with a valid CRC."""
    data = bytearray(png_bytes(8, 8))
    ihdr = data[12:29]  # b"IHDR" + 13 bytes of header
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


def test_health_and_model_description(client, served_run):
    assert client.get("/health").json()["status"] == "ok"
    info = client.get("/v1/model").json()
    assert [(i["name"], i["type"], i["required"]) for i in info["inputs"]] == [
        ("image", "image", True), ("question", "text", True)]
    assert info["inputs"][0]["max_pixels"] > 0 and info["inputs"][1]["max_chars"] > 0
    labels = set(info["outputs"][0]["labels"])
    assert labels == {"red", "green", "blue", "circle", "square", "triangle"}
    assert info["batching"]["max_batch_size"] == 32
    assert "<title>mmfuse</title>" in client.get("/").text


def test_served_outputs_equal_cli_predict(client, served_run):
    """Same input, same output: the server and ``mmfuse predict --json`` agree exactly."""
    image = served_run["data"] / "img/test_0003.png"
    for question in (COLOUR_Q, SHAPE_Q):
        cli = json.loads(run("predict", served_run["run"], "--set", f"image={image}",
                             "--set", f"question={question}", "--json").stdout)
        served = client.post("/v1/predict", files={"image": ("a.png", image.read_bytes())},
                             data={"question": question})
        assert served.status_code == 200, served.text
        assert served.json() == cli


def test_batch_endpoint_equals_python_api_row_by_row(client, served_run):
    import mmfuse

    model = mmfuse.Model.load(served_run["run"])
    images = sorted((served_run["data"] / "img").glob("test_*.png"))[:12]
    rows = [{"image": str(p), "question": COLOUR_Q if i % 2 else SHAPE_Q}
            for i, p in enumerate(images)]
    expected = model.predict(rows)
    body = {"rows": [{"image": base64.b64encode(open(r["image"], "rb").read()).decode(),
                      "question": r["question"]} for r in rows]}
    response = client.post("/v1/predict/batch", json=body)
    assert response.status_code == 200, response.text
    got = [r["outputs"] for r in response.json()["rows"]]
    for g, e in zip(got, expected, strict=True):
        assert g["answer"]["prediction"] == e["answer"]["prediction"]
        for label, p in e["answer"]["probabilities"].items():
            assert g["answer"]["probabilities"][label] == pytest.approx(p, abs=2e-6)


def test_files_are_recognised_by_content_not_by_claimed_type(client):
    png = png_bytes()
    lying = client.post("/v1/predict", files={"image": ("notes.txt", png, "text/plain")},
                        data={"question": COLOUR_Q})
    assert lying.status_code == 200
    fake = client.post("/v1/predict", files={"image": ("cat.png", b"GIF? no: plain text",
                                                       "image/png")},
                       data={"question": COLOUR_Q})
    assert fake.status_code == 422
    assert fake.json()["error"]["field"] == "image"
    assert "not an image" in fake.json()["error"]["message"]


def test_truncated_image_is_a_422_not_a_crash(client):
    png = png_bytes(64, 64)
    response = client.post("/v1/predict", files={"image": ("a.png", png[: len(png) // 2])},
                           data={"question": COLOUR_Q})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "image"


@pytest.mark.parametrize("form, files, status, field, words", [
    ({"question": COLOUR_Q}, None, 422, "image", "missing field"),
    ({"question": COLOUR_Q, "colour": "red"}, {"image": png_bytes()}, 422, "colour",
     "unknown field"),
    ({}, {"image": png_bytes(), "question": png_bytes()}, 422, "question", "expected text"),
    ({"question": "x" * 2001}, {"image": png_bytes()}, 413, "question", "over the limit"),
])
def test_bad_fields_name_the_field_and_reason(client, form, files, status, field, words):
    files = {k: ("f.bin", v) for k, v in (files or {}).items()}
    response = client.post("/v1/predict", data=form, files=files or None)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field and words in error["message"], error


def test_image_field_sent_as_text_is_refused(client):
    response = client.post("/v1/predict", data={"image": "img.png", "question": COLOUR_Q})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "image"
    assert "expected an uploaded image" in response.json()["error"]["message"]


def test_duplicate_field_is_refused(client):
    body = (b"--B\r\nContent-Disposition: form-data; name=\"question\"\r\n\r\na\r\n"
            b"--B\r\nContent-Disposition: form-data; name=\"question\"\r\n\r\nb\r\n--B--\r\n")
    response = client.post("/v1/predict", content=body,
                           headers={"content-type": "multipart/form-data; boundary=B"})
    assert response.status_code == 422
    assert "more than once" in response.json()["error"]["message"]


def test_malformed_requests_get_4xx_json(client):
    cases = [
        client.post("/v1/predict", json={"question": COLOUR_Q}),  # JSON is for /batch
        client.post("/v1/predict", content=b"--X\r\ngarbage",
                    headers={"content-type": "multipart/form-data; boundary=X"}),
        client.post("/v1/predict/batch", content=b"{not json"),
        client.post("/v1/predict/batch", json=[1, 2]),
        client.post("/v1/predict/batch", json={"rows": []}),
        client.post("/v1/predict/batch", json={"rows": [1]}),
        client.post("/v1/predict/batch", json={"rows": [{"question": COLOUR_Q}], "x": 1}),
        client.post("/v1/predict/batch", json={"rows": [{"image": "@@@", "question": "q"}]}),
        client.post("/v1/predict/batch", json={"rows": [{"image": 5, "question": "q"}]}),
        client.post("/v1/predict/batch", json={"rows": [{"image": base64.b64encode(
            png_bytes()).decode(), "question": 7}]}),
        client.get("/v1/predict"),
        client.get("/no/such/route"),
    ]
    for response in cases:
        assert 400 <= response.status_code < 500, (response.status_code, response.text)
        error = response.json()["error"]
        assert error["message"] and error["status"] == response.status_code
    assert cases[0].status_code == 415 and cases[2].status_code == 400
    assert cases[7].json()["error"]["field"] == "rows[0].image"
    assert cases[9].json()["error"]["field"] == "rows[0].question"
    assert client.get("/health").status_code == 200  # still serving


def test_batch_accepts_data_urls_and_caps_rows(client):
    url = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    ok = client.post("/v1/predict/batch", json={"rows": [{"image": url, "question": SHAPE_Q}]})
    assert ok.status_code == 200
    too_many = client.post("/v1/predict/batch",
                           json={"rows": [{"image": url, "question": SHAPE_Q}] * 65})
    assert too_many.status_code == 413 and too_many.json()["error"]["field"] == "rows"


def serve_with(served_run, **settings) -> TestClient:
    limits = settings.pop("limits", Limits())
    service = load_service(served_run["run"], limits=limits)
    return TestClient(create_app(service, ServeSettings(limits=limits, **settings)))


def test_size_caps_answer_413(served_run):
    limits = Limits(max_body_mb=0.05, max_image_pixels=64 * 64)
    with serve_with(served_run, limits=limits) as client:
        big_body = client.post("/v1/predict", files={"image": ("a.png", b"\0" * 80_000)},
                               data={"question": COLOUR_Q})
        assert big_body.status_code == 413 and "body" in big_body.json()["error"]["message"]
        big_image = client.post("/v1/predict", files={"image": ("a.png", png_bytes(100, 100))},
                                data={"question": COLOUR_Q})
        assert big_image.status_code == 413
        assert big_image.json()["error"]["field"] == "image"
        assert client.post("/v1/predict", files={"image": ("a.png", png_bytes(64, 64))},
                           data={"question": COLOUR_Q}).status_code == 200


def test_decompression_bomb_is_refused_before_decoding(client):
    bomb = png_claiming(50_000, 50_000)  # 2.5 gigapixels in a 100-byte file
    response = client.post("/v1/predict", files={"image": ("bomb.png", bomb)},
                           data={"question": COLOUR_Q})
    assert response.status_code == 413, response.text
    assert "pixels" in response.json()["error"]["message"]


def test_streamed_body_without_length_is_capped(served_run):
    """A client that sends no Content-Length (chunked) is still stopped at the cap."""
    with serve_with(served_run, limits=Limits(max_body_mb=0.01)) as client:
        def chunks():  # a well-formed start of a file part, then far too many bytes
            yield (b'--B\r\nContent-Disposition: form-data; name="image"; filename="a.png"'
                   b"\r\n\r\n")
            for _ in range(50):
                yield b"x" * 1024
        response = client.post("/v1/predict", content=chunks(),
                               headers={"content-type": "multipart/form-data; boundary=B"})
        assert response.status_code == 413


def test_api_key(served_run):
    with serve_with(served_run, api_key="s3cret") as client:
        assert client.get("/health").status_code == 200  # probes need no key
        assert client.get("/").status_code == 200  # the page asks for the key itself
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            response = client.get("/v1/model", headers=headers)
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == "Bearer"
        assert client.get("/metrics").status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        assert client.get("/v1/model", headers=good).status_code == 200
        response = client.post("/v1/predict", headers=good, data={"question": COLOUR_Q},
                               files={"image": ("a.png", png_bytes())})
        assert response.status_code == 200


def test_metrics_count_requests_batches_and_waits(client):
    for _ in range(3):
        client.post("/v1/predict", data={"question": COLOUR_Q},
                    files={"image": ("a.png", png_bytes())})
    client.post("/v1/predict", data={"question": COLOUR_Q})
    text = client.get("/metrics").text
    assert 'mmfuse_requests_total{method="POST",route="/v1/predict",status="200"} 3.0' in text
    assert 'mmfuse_requests_total{method="POST",route="/v1/predict",status="422"} 1.0' in text
    assert "mmfuse_batch_rows_count 3.0" in text
    assert "mmfuse_queue_wait_seconds_bucket" in text
    assert 'mmfuse_request_seconds_bucket{le="0.01",route="/v1/predict"}' in text


class SlowService(Service):
    """A service whose forward pass takes ``delay`` seconds."""

    delay = 0.5

    def run(self, jobs):
        time.sleep(self.delay)
        return super().run(jobs)


def test_timeout_answers_503_and_server_recovers(served_run):
    service = load_service(served_run["run"])
    service.__class__ = SlowService
    service.delay = 0.5
    with TestClient(create_app(service, ServeSettings(timeout_s=0.2))) as client:
        response = client.post("/v1/predict", data={"question": COLOUR_Q},
                               files={"image": ("a.png", png_bytes())})
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        service.delay = 0.0
        time.sleep(0.6)
        ok = client.post("/v1/predict", data={"question": COLOUR_Q},
                         files={"image": ("a.png", png_bytes())})
        assert ok.status_code == 200


def test_full_queue_answers_429_and_no_request_is_lost(served_run):
    """With room for two waiting requests and a slow model, a burst of eight gets some 429s
    (with Retry-After); every other request gets its answer."""
    import httpx

    service = load_service(served_run["run"])
    service.__class__ = SlowService
    service.delay = 0.3
    app = create_app(service, ServeSettings(max_queue=2, workers=1))

    async def burst():
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=transport, base_url="http://test") as client:
            return await asyncio.gather(*(client.post(
                "/v1/predict", data={"question": COLOUR_Q},
                files={"image": ("a.png", png_bytes())}) for _ in range(8)))

    responses = asyncio.run(burst())
    statuses = sorted(r.status_code for r in responses)
    assert 429 in statuses and 200 in statuses and set(statuses) <= {200, 429}, statuses
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.headers["retry-after"] == "1" and "retry" in refused.json()["error"]["message"]


def test_health_is_503_until_the_model_is_loaded(served_run):
    release = threading.Event()

    def slow_load():
        release.wait(10)
        return load_service(served_run["run"])

    with TestClient(create_app(slow_load)) as client:
        loading = client.get("/health")
        assert loading.status_code == 503 and loading.json()["status"] == "loading"
        assert client.post("/v1/predict", data={"question": "q"}).status_code == 503
        release.set()
        for _ in range(100):
            if client.get("/health").status_code == 200:
                break
            time.sleep(0.05)
        assert client.get("/health").json()["status"] == "ok"


def test_failed_load_is_reported_by_health(tmp_path):
    def broken():
        return load_service(tmp_path / "nothing-here")

    with TestClient(create_app(broken)) as client:
        for _ in range(100):
            health = client.get("/health").json()
            if health["status"] != "loading":
                break
            time.sleep(0.05)
        assert health["status"] == "failed" and "no model bundle" in health["error"]


@pytest.fixture(scope="module")
def media_run(tmp_path_factory):
    """A tiny model over audio, video and text, trained one epoch (for the duration caps)."""
    from media import moving_square, tone, write_audio, write_video

    folder = tmp_path_factory.mktemp("media")
    rows = []
    for i in range(8):
        write_audio(folder / f"a{i}.wav", tone(300 + 100 * i, 0.5, 16000), 16000)
        write_video(folder / f"v{i}.mp4", moving_square(6, 32, 32, 1 if i % 2 else -1))
        rows.append(f"a{i}.wav,v{i}.mp4,which way,{'right' if i % 2 else 'left'}")
    (folder / "train.csv").write_text("audio,video,prompt,label\n" + "\n".join(rows) + "\n")
    config = {
        "inputs": [
            {"name": "audio", "type": "audio", "preprocess": {"n_mels": 16, "max_seconds": 1.0},
             "encoder": {"type": "audio_cnn", "channels": [4], "dim": 8},
             "modality_dropout": 0.3},
            {"name": "video", "type": "video", "preprocess": {"size": 16, "frames": 4},
             "encoder": {"type": "frame_cnn", "channels": [4], "dim": 8}},
            {"name": "prompt", "type": "text", "encoder": {"type": "bow", "dim": 8}},
        ],
        "fusion": {"type": "concat"},
        "outputs": [{"name": "label", "type": "category"}],
        "training": {"epochs": 1, "batch_size": 4, "valid_fraction": 0},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    run("train", folder / "config.yaml", "--data", folder / "train.csv", "--out",
        folder / "run", "--threads", "1")
    return folder


def test_audio_and_video_caps_and_optional_inputs(media_run):
    from media import moving_square, tone, write_audio, write_video

    limits = Limits(max_media_seconds=2.0)
    service = load_service(media_run / "run", limits=limits)
    long_audio = write_audio(media_run / "long.wav", tone(440, 3.0, 8000), 8000).read_bytes()
    long_video = write_video(media_run / "long.mp4", moving_square(40, 16, 16, 1),
                             fps=10).read_bytes()
    audio = (media_run / "a1.wav").read_bytes()
    video = (media_run / "v1.mp4").read_bytes()
    with TestClient(create_app(service, ServeSettings(limits=limits))) as client:
        info = {i["name"]: i for i in client.get("/v1/model").json()["inputs"]}
        assert info["audio"]["required"] is False and info["video"]["required"] is True
        assert info["audio"]["max_seconds"] == 2.0

        def post(**files):
            return client.post("/v1/predict", data={"prompt": "which way"},
                               files={k: ("clip", v) for k, v in files.items()})

        assert post(audio=audio, video=video).status_code == 200
        without_audio = post(video=video)  # trained with modality dropout: may be left out
        assert without_audio.status_code == 200
        too_long = post(audio=long_audio, video=video)
        assert too_long.status_code == 413 and too_long.json()["error"]["field"] == "audio"
        assert "3.0 s" in too_long.json()["error"]["message"]
        too_long = post(audio=audio, video=long_video)
        assert too_long.status_code == 413 and too_long.json()["error"]["field"] == "video"
        not_audio = post(audio=png_bytes(), video=video)
        assert not_audio.status_code == 422 and not_audio.json()["error"]["field"] == "audio"
        not_video = post(audio=audio, video=b"\x00" * 1000)
        assert not_video.status_code == 422 and not_video.json()["error"]["field"] == "video"
        # a clip sent as audio decodes by content: an MP4 without sound has no audio stream
        no_sound = post(audio=video, video=video)
        assert no_sound.status_code == 422 and no_sound.json()["error"]["field"] == "audio"


def test_results_do_not_depend_on_batch_company(media_run):
    """A request gives the same outputs alone and batched with clips of other lengths."""
    from media import tone, write_audio

    service = load_service(media_run / "run")
    short = (media_run / "a1.wav").read_bytes()
    longer = write_audio(media_run / "longer.wav", tone(500, 0.9, 16000), 16000).read_bytes()
    video = (media_run / "v1.mp4").read_bytes()
    row = {"audio": short, "video": video, "prompt": "which way"}
    alone = service.run([service.prepare([row])])[0][0]
    together = service.run([service.prepare([row]), service.prepare(
        [{"audio": longer, "video": video, "prompt": "which way"}])])[0][0]
    for label, p in alone["label"]["probabilities"].items():
        assert together["label"]["probabilities"][label] == pytest.approx(p, abs=1e-5)


def test_decoded_rows_match_the_table_path(served_run):
    """pipeline.encode_values (the server) and pipeline.encode (tables) give equal tensors."""
    import mmfuse
    from mmfuse.data.table import read_table

    model = mmfuse.Model.load(served_run["run"])
    table = read_table(served_run["test"]).subset(list(range(6)))
    from_table = model.pipeline.logits(model.pipeline.encode(table, targets=False))
    service = Service(model, Limits())
    rows = [{"image": (served_run["data"] / r["image"]).read_bytes(),
             "question": r["question"]} for r in table.rows]
    prepared = service.prepare(rows)
    from_values = model.pipeline.logits(model.pipeline.encode_values(prepared.values))
    np.testing.assert_allclose(from_values["answer"].numpy(), from_table["answer"].numpy(),
                               atol=1e-6)


def test_two_forward_workers_answer_a_burst_of_text_requests(served_run, caplog):
    """Two forward passes at once share the model and one tokenizer (behind a lock): every
    request of a burst gets its answer, and no pass fails and is retried row by row."""
    import httpx

    app = create_app(load_service(served_run["run"]), ServeSettings(workers=2, max_batch_size=2))
    questions = [COLOUR_Q, SHAPE_Q, "what colour?", "which shape is it?"]

    async def burst():
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=transport, base_url="http://test") as client:
            return await asyncio.gather(*(client.post(
                "/v1/predict", data={"question": questions[i % 4]},
                files={"image": ("a.png", png_bytes())}) for i in range(24)))

    assert [r.status_code for r in asyncio.run(burst())] == [200] * 24
    assert "forward pass failed" not in caplog.text


def test_deeply_nested_json_and_blank_text_are_4xx(client):
    nested = client.post("/v1/predict/batch", content=b"[" * 100_000,
                         headers={"content-type": "application/json"})
    assert nested.status_code == 400
    blank = client.post("/v1/predict", data={"question": "   "},
                        files={"image": ("a.png", png_bytes())})
    assert blank.status_code == 422 and blank.json()["error"]["field"] == "question"


def test_media_of_unknown_duration_is_refused(media_run, monkeypatch):
    """Decoding a stream whose header gives no length could take any memory: refused."""
    from mmfuse.modalities import files
    from mmfuse.serve import inputs

    monkeypatch.setattr(files, "media_seconds", lambda path, kind: None)
    service = load_service(media_run / "run")
    with pytest.raises(inputs.RequestError) as refused:
        service.prepare([{"audio": (media_run / "a1.wav").read_bytes(),
                          "video": (media_run / "v1.mp4").read_bytes(), "prompt": "which way"}])
    assert refused.value.status == 422 and refused.value.field == "audio"
    assert "duration" in refused.value.message


def test_a_pretrained_encoder_serves_what_predict_gives(served_run, tmp_path):
    """An ImageNet EfficientNet trained on cached features is served live: the server's
    answers equal the bundle's ``predict``, and an image of another size is resized as in
    training."""
    import mmfuse

    config = {"inputs": [{"name": "image", "type": "image", "preprocess": {"size": 64},
                          "encoder": {"type": "efficientnet_lite0"}},
                         {"name": "question", "type": "text", "encoder": {"type": "bow"}}],
              "outputs": [{"name": "answer", "type": "category"}],
              "training": {"epochs": 2}}
    mmfuse.Model.from_config(config).fit(served_run["train"], out=tmp_path / "run", threads=1)
    model = mmfuse.Model.load(tmp_path / "run")
    images = sorted((served_run["data"] / "img").glob("test_*.png"))[:4]
    with TestClient(create_app(load_service(tmp_path / "run"))) as client:
        for i, image in enumerate(images):
            question = COLOUR_Q if i % 2 else SHAPE_Q
            served = client.post("/v1/predict", files={"image": ("a.png", image.read_bytes())},
                                 data={"question": question})
            assert served.status_code == 200, served.text
            [expected] = model.predict([{"image": str(image), "question": question}])
            assert served.json()["outputs"]["answer"]["prediction"] == \
                expected["answer"]["prediction"]
            for label, p in expected["answer"]["probabilities"].items():
                assert served.json()["outputs"]["answer"]["probabilities"][label] == \
                    pytest.approx(p, abs=1e-5)
        odd = client.post("/v1/predict", files={"image": ("b.png", png_bytes(50, 30))},
                          data={"question": COLOUR_Q})
        assert odd.status_code == 200, odd.text
