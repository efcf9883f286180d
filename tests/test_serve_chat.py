"""OpenAI's chat API on ``mmfuse serve``, driven by the official ``openai`` client against a
real server: answers agree with ``predict`` and ``evaluate``, streamed answers equal plain ones,
refusals use OpenAI's error shape, and a client that leaves mid-stream stops its generation."""

from __future__ import annotations

import base64
import copy
import csv
import json
import time

import httpx
import pytest

from conftest import MINIMAL, make_shapes_qa

openai = pytest.importorskip("openai")

KEY = "chat-key"


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    """An image + question model whose answer is free text (a GRU decoder), and its server."""
    import mmfuse
    from serving import start_server, stop_server

    folder = tmp_path_factory.mktemp("chat")
    train = make_shapes_qa(folder / "data", 150, "en", seed=1, name="train.csv")
    test = make_shapes_qa(folder / "data", 10, "en", seed=2, name="test.csv")
    config = copy.deepcopy(MINIMAL)
    config["outputs"] = [{"name": "answer", "type": "text", "decoder": "gru",
                          "head": {"dim": 32, "max_length": 6}}]
    config["training"]["epochs"] = 8
    mmfuse.Model.from_config(config).fit(train, out=folder / "qa")
    process, url = start_server([str(folder / "qa"), "--api-key", KEY,
                                 "--data-root", str(folder / "data")])
    yield {"url": url, "run": folder / "qa", "data": folder / "data", "test": test,
           "pid": process.pid}
    stop_server(process)


def client(run, key=KEY):
    return openai.OpenAI(base_url=run["url"] + "/v1", api_key=key, max_retries=0)


def held_out_rows(run) -> list[dict]:
    rows = list(csv.DictReader(open(run["test"])))
    return [{**r, "image": str(run["data"] / r["image"])} for r in rows]


def message(question: str, image: str) -> list[dict]:
    data = base64.b64encode(open(image, "rb").read()).decode()
    return [{"role": "system", "content": "You answer questions about pictures."},
            {"role": "user", "content": [
                {"type": "text", "text": question},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}]}]


def test_chat_answers_as_predict_and_evaluate_and_streams_the_same(chat_run):
    import mmfuse

    chat = client(chat_run)
    assert [m.id for m in chat.models.list()] == ["qa"]
    rows = held_out_rows(chat_run)
    model = mmfuse.Model.load(chat_run["run"])
    predicted = model.predict([{"image": r["image"], "question": r["question"]} for r in rows])
    right = 0
    for row, expected in zip(rows, predicted, strict=True):
        messages = message(row["question"], row["image"])
        answer = chat.chat.completions.create(model="qa", messages=messages)
        content = answer.choices[0].message.content
        assert content == expected["answer"]["prediction"]
        assert answer.choices[0].finish_reason == "stop"
        assert answer.usage.completion_tokens >= 1 and answer.usage.prompt_tokens >= 1
        assert answer.model_extra["mmfuse"]["answered_by"] == "answer"
        right += content == row["answer"]
        streamed, finish, usage = [], None, None
        for piece in chat.chat.completions.create(model="qa", messages=messages, stream=True,
                                                  stream_options={"include_usage": True}):
            if piece.choices:
                streamed.append(piece.choices[0].delta.content or "")
                finish = piece.choices[0].finish_reason or finish
            usage = piece.usage or usage
        assert "".join(streamed) == content and finish == "stop"
        assert usage.completion_tokens == answer.usage.completion_tokens
    scores = model.evaluate(chat_run["test"])["outputs"]["answer"]
    assert right / len(rows) == pytest.approx(scores["exact_match"])


def test_sampling_parameters_apply(chat_run):
    chat = client(chat_run)
    row = held_out_rows(chat_run)[0]
    messages = message(row["question"], row["image"])
    first = chat.chat.completions.create(model="qa", messages=messages, temperature=1.5,
                                         seed=7, n=3)
    again = chat.chat.completions.create(model="qa", messages=messages, temperature=1.5,
                                         seed=7, n=3)
    assert len(first.choices) == 3
    assert [c.message.content for c in first.choices] == \
        [c.message.content for c in again.choices]
    long = chat.chat.completions.create(model="qa", messages=messages, max_tokens=5,
                                        temperature=0, extra_body={"min_tokens": 5})
    assert long.usage.completion_tokens == 5 and long.choices[0].finish_reason == "length"


def test_bad_requests_get_openai_errors(chat_run):
    chat = client(chat_run)
    row = held_out_rows(chat_run)[0]
    question = row["question"]

    def ask(url: str):
        return chat.chat.completions.create(model="qa", messages=[{"role": "user", "content": [
            {"type": "text", "text": question}, {"type": "image_url", "image_url": {"url": url}}]}])

    with pytest.raises(openai.BadRequestError, match="fetches no http"):
        ask("https://example.com/cat.png")
    with pytest.raises(openai.BadRequestError, match="base64") as bad:
        ask("data:image/png;base64,@@not-base64@@")
    assert bad.value.body["param"].endswith("image_url.url")
    with pytest.raises(openai.PermissionDeniedError, match="outside"):
        ask("file:///etc/hostname")
    assert ask("file://" + row["image"]).choices[0].message.content  # under --data-root
    with pytest.raises(openai.UnprocessableEntityError, match="missing field 'image'"):
        chat.chat.completions.create(model="qa", messages=[{"role": "user",
                                                            "content": question}])
    with pytest.raises(openai.AuthenticationError):
        client(chat_run, "wrong-key").chat.completions.create(
            model="qa", messages=[{"role": "user", "content": question}])
    with pytest.raises(openai.NotFoundError, match="serves 'qa'"):
        chat.chat.completions.create(model="gpt-4o", messages=[{"role": "user",
                                                                "content": question}])
    with pytest.raises(openai.BadRequestError) as bad:
        chat.chat.completions.create(model="qa", messages=message(question, row["image"]),
                                     temperature=3)
    assert bad.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError, match="tools"):
        chat.chat.completions.create(model="qa", messages=message(question, row["image"]),
                                     tools=[{"type": "function", "function": {"name": "f"}}])


def generated(run) -> float:
    text = httpx.get(run["url"] + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith("mmfuse_chat_")}
    return values["mmfuse_chat_generated_tokens_total"], \
        values["mmfuse_chat_streams_abandoned_total"]


def test_a_client_that_leaves_mid_stream_stops_its_generation(chat_run):
    """Held from ending (min_tokens), the answer would run to 4,096 tokens; the client reads
    one piece and leaves, and the server writes far fewer."""
    row = held_out_rows(chat_run)[0]
    before, left_before = generated(chat_run)
    body = {"model": "qa", "messages": message(row["question"], row["image"]), "stream": True,
            "max_tokens": 4096, "min_tokens": 4096, "temperature": 0}
    with httpx.stream("POST", chat_run["url"] + "/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {KEY}"}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if '"delta": {"content": "' in line and '"content": ""' not in line:
                break
    for _ in range(300):  # the pass ends (and counts its tokens) once it sees the client left
        after, left = generated(chat_run)
        if after > before:
            break
        time.sleep(0.1)
    assert left == left_before + 1
    assert 0 < after - before < 4096


def test_every_modality_maps_from_content_parts_as_predict_batch_reads_it(every_type_run):
    """Image, audio and video parts, a text part, and a JSON text part for the number,
    category and yes/no inputs reach the same inputs as a /v1/predict/batch row."""
    import json

    from starlette.testclient import TestClient

    from mmfuse.serve import create_app, load_service

    data = every_type_run["data"]
    row = json.loads((data / "table.jsonl").read_text().splitlines()[0])

    def b64(name: str) -> str:
        return base64.b64encode((data / row[name]).read_bytes()).decode()

    batch_row = {"image": b64("image"), "sound": b64("sound"), "clip": b64("clip"),
                 "note": row["note"], "weight": row["weight"], "brand": row["brand"],
                 "handmade": row["handmade"]}
    content = [
        {"type": "text", "text": row["note"]},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64("image")}},
        {"type": "input_audio", "input_audio": {"data": b64("sound"), "format": "wav"}},
        {"type": "video_url", "video_url": {"url": "data:video/mp4;base64," + b64("clip")}},
        {"type": "text", "text": json.dumps({k: row[k] for k in ("weight", "brand",
                                                                 "handmade")})}]
    with TestClient(create_app(load_service(every_type_run["run"]))) as client:
        name = client.get("/v1/models").json()["data"][0]["id"]
        expected = client.post("/v1/predict/batch", json={"rows": [batch_row]}).json()
        chat = client.post("/v1/chat/completions", json={
            "model": name, "messages": [{"role": "user", "content": content}]})
        assert chat.status_code == 200, chat.text
        body = chat.json()
        # the first text output answers; the whole predict answer rides along
        assert body["mmfuse"]["answered_by"] == "caption"
        assert body["mmfuse"]["outputs"] == expected["rows"][0]["outputs"]
        assert body["choices"][0]["message"]["content"] == \
            expected["rows"][0]["outputs"]["caption"]["prediction"]
        # tabular inputs may also come by name, with files in base64
        by_name = client.post("/v1/chat/completions", json={
            "model": name, "messages": [{"role": "user", "content": row["note"]}],
            "mmfuse_inputs": {k: v for k, v in batch_row.items() if k != "note"}})
        assert by_name.json()["mmfuse"]["outputs"] == expected["rows"][0]["outputs"]
        two_images = client.post("/v1/chat/completions", json={
            "model": name, "messages": [{"role": "user", "content": [content[1], content[1]]}]})
        assert two_images.status_code == 400
        assert two_images.json()["error"]["message"].endswith("1 image input(s): image")
        twice = client.post("/v1/chat/completions", json={
            "model": name, "messages": [{"role": "user", "content": content}],
            "mmfuse_inputs": {"note": "again"}})
        assert twice.status_code == 400 and "'note' is given twice" in twice.text
        streamed = client.post("/v1/chat/completions", json={
            "model": name, "messages": [{"role": "user", "content": content}], "stream": True})
        events = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or ""
                       for e in events[:-1] if json.loads(e)["choices"])
        assert text == body["choices"][0]["message"]["content"]


def test_streamed_text_holds_back_what_may_begin_a_stop_string():
    from mmfuse.serve.chat import StreamedText

    words = ["a", "b", "END", "c"]
    text = StreamedText(lambda ids: " ".join(words[i] for i in ids), ["END"])
    assert text.add(0) == "a"
    assert text.add(1) == " b"
    assert text.add(2) == " " and text.stopped  # "END" is cut, and it ends the row
    assert text.take("a b ") == ""  # the answer, cut at the stop string too
    held = StreamedText(lambda ids: "".join(["ab", "c", "E", "N"][i] for i in ids), ["END"])
    assert [held.add(i) for i in range(4)] == ["ab", "c", "", ""]  # "E", "EN" may begin END
    assert held.take("abcEN") == "EN"  # the answer ended without it: the rest is sent


def test_a_mixed_load_gets_no_server_error_and_memory_settles(chat_run):
    """A short soak (``benchmarks/serve_soak.py`` runs 60 s): chat, streamed chat, form
    predictions and malformed requests at once; nothing gets a 5xx or the wrong answer, and
    resident memory grows at most 10% after the warm-up."""
    import asyncio

    from serving import rss_bytes, soak, soak_requests

    row = held_out_rows(chat_run)[0]
    requests = soak_requests("qa", open(row["image"], "rb").read(), row["question"])
    headers = {"Authorization": f"Bearer {KEY}"}
    warm = asyncio.run(soak(chat_run["url"], requests, 16, 3, headers))
    settled = rss_bytes(chat_run["pid"])
    run = asyncio.run(soak(chat_run["url"], requests, 16, 8, headers))
    grown = rss_bytes(chat_run["pid"]) / settled - 1
    assert not warm["wrong"] and not run["wrong"], run["wrong"][:5]
    assert all(run["statuses"][kind] for kind in requests)  # every kind was sent
    assert grown <= 0.10, f"RSS grew {grown:.1%} after the warm-up"


def test_a_chat_request_that_changes_nothing_shares_passes_with_predictions(chat_run):
    """Unset parameters mean no generation updates, so the batcher may put a chat request and
    a /v1/predict request in one forward pass."""
    from mmfuse.serve import load_service
    from mmfuse.serve.chat import parse_chat
    from mmfuse.serve.inputs import Prepared
    from mmfuse.serve.service import Steering

    service = load_service(chat_run["run"])
    row = held_out_rows(chat_run)[0]
    body = json.dumps({"model": "qa", "messages": message(row["question"], row["image"])})
    chat = parse_chat(body.encode(), service, None)
    assert chat.options == {}
    assert Prepared({}, 1, steering=Steering(chat.output, chat.options)).key == Prepared({}, 1).key
    sampled = parse_chat(json.dumps({"model": "qa", "temperature": 0.5, "messages": message(
        row["question"], row["image"])}).encode(), service, None)
    assert Prepared({}, 1, steering=Steering(sampled.output, sampled.options)).key != ()
