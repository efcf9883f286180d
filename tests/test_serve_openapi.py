"""``GET /openapi.json`` describes the served model's real fields, and a client we did not
write (schemathesis, generating requests from that schema) finds no server error."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import HealthCheck, settings

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import not_a_server_error  # noqa: E402


@pytest.fixture(scope="module")
def every_type_server(every_type_run):
    """A real ``mmfuse serve`` of the model with every input and output type."""
    from serving import start_server, stop_server

    process, url = start_server([str(every_type_run["run"])])
    yield url
    stop_server(process)


def test_the_schema_names_the_model_fields(every_type_server):
    schema = httpx.get(every_type_server + "/openapi.json").json()
    assert schema["openapi"].startswith("3.1")
    form = schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"][
        "multipart/form-data"]["schema"]
    assert list(form["properties"]) == ["image", "note", "sound", "clip", "weight", "brand",
                                        "handmade"]
    # the file inputs were trained with modality dropout: a request may leave them out
    assert form["required"] == ["note", "weight", "brand", "handmade"]
    assert form["properties"]["image"]["format"] == "binary"
    assert form["properties"]["weight"]["type"] == "number"
    assert form["properties"]["note"]["maxLength"] == 2000
    assert "acme" in form["properties"]["brand"]["examples"]
    row = schema["paths"]["/v1/predict/batch"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]["properties"]["rows"]["items"]
    assert row["properties"]["sound"]["anyOf"][0]["contentEncoding"] == "base64"
    answer = schema["paths"]["/v1/predict"]["post"]["responses"]["200"]["content"][
        "application/json"]["schema"]["properties"]["outputs"]["properties"]
    assert answer["price"]["properties"]["prediction"]["type"] == "number"
    assert answer["tags"]["properties"]["prediction"]["items"]["enum"] == ["big", "craft",
                                                                           "warm"]
    assert answer["shape"]["properties"]["prediction"]["enum"] == ["circle", "square",
                                                                   "triangle"]
    assert set(answer["heavy"]["properties"]) == {"prediction", "probability", "probabilities"}
    assert set(answer["caption"]["properties"]) >= {"prediction", "score"}


def test_the_server_answers_every_type(every_type_server, every_type_run):
    import base64

    data = every_type_run["data"]
    row = {"image": base64.b64encode((data / "img/000.png").read_bytes()).decode(),
           "note": "a red thing",
           "sound": base64.b64encode((data / "snd/000.wav").read_bytes()).decode(),
           "clip": base64.b64encode((data / "vid/000.mp4").read_bytes()).decode(),
           "weight": 7.5, "brand": "never seen", "handmade": True}
    response = httpx.post(every_type_server + "/v1/predict/batch", json={"rows": [row]},
                          timeout=30)
    assert response.status_code == 200, response.text
    outputs = response.json()["rows"][0]["outputs"]
    assert isinstance(outputs["price"]["prediction"], float)
    assert outputs["heavy"]["prediction"] in ("yes", "no")
    assert isinstance(outputs["tags"]["prediction"], list)
    bad = httpx.post(every_type_server + "/v1/predict/batch",
                     json={"rows": [{**row, "weight": "heavy"}]}, timeout=30)
    assert bad.status_code == 422
    assert bad.json()["error"]["field"] == "rows[0].weight"
    assert "expected a number" in bad.json()["error"]["message"]
    form = httpx.post(every_type_server + "/v1/predict", timeout=30, data={
        "note": "x", "weight": "2.5", "brand": "acme", "handmade": "maybe"}, files={
        k: (data / p).read_bytes() for k, p in (("image", "img/001.png"),
                                                 ("sound", "snd/001.wav"),
                                                 ("clip", "vid/001.mp4"))})
    assert form.status_code == 422 and form.json()["error"]["field"] == "handmade"


EXAMPLES = 25  # generated requests per operation


def test_fuzzing_finds_no_server_error(every_type_server):
    """schemathesis generates requests for every operation of the schema (valid ones, and
    values of every kind in every field) and checks that none gets a 5xx answer."""
    from hypothesis import given

    schema = schemathesis.openapi.from_url(every_type_server + "/openapi.json")
    calls: dict[str, list[int]] = {}

    def fuzzer(operation):
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case):
            response = case.call(timeout=60)
            calls.setdefault(operation.label, []).append(response.status_code)
            case.validate_response(response, checks=[not_a_server_error])

        return fuzz

    for result in schema.get_all_operations():
        fuzzer(result.ok())()
    assert {"POST /v1/predict", "POST /v1/predict/batch", "GET /v1/model",
            "POST /v1/chat/completions", "GET /v1/models"} <= set(calls)
    assert all(code < 500 for codes in calls.values() for code in codes)
    # the generated requests reach the model, not only the validation
    assert 200 in calls["POST /v1/predict/batch"] or 200 in calls["POST /v1/predict"]
