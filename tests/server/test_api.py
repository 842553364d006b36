"""The REST API on a TestClient: every endpoint, every client mistake as a 4xx with the
reason the CLI prints."""

from __future__ import annotations

import base64
import copy
import dataclasses
import io
import json
import re
import tempfile

import numpy as np
import pytest
from PIL import Image
from server_forms import png_bytes, upload
from synthetic import png_claiming

from covidct.intended_use import RESEARCH_USE_STATEMENT
from covidct.model.card import ModelCard
from covidct.model.ood import not_ct_message
from covidct.server.inference import ServerBusyError
from covidct.server.routes.model import public_card


def test_healthz_is_ok(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_model_endpoint_serves_the_card(client, predictor, onnx_model_dir):
    info = client.get("/api/v1/model").json()

    card = predictor.card
    assert (info["classes"], info["positive_class"], info["threshold"]) == (
        list(card.classes),
        card.positive_class,
        card.decision.threshold,
    )
    assert (info["image_size"], info["has_ood_guard"], info["engine"]) == (64, True, "torch")
    card_as_written = ModelCard.from_dict(
        json.loads((onnx_model_dir / "model.json").read_text(encoding="utf-8"))
    )
    assert info["card"] == json.loads(json.dumps(public_card(card_as_written)))
    assert info["research_use"] == RESEARCH_USE_STATEMENT


def test_one_slice_gets_the_same_answer_as_predict_on_its_file(client, predictor, tiny_dataset):
    path = tiny_dataset.paths["non-COVID"][1]

    answer = client.post("/api/v1/predict", files=upload((path.name, path.read_bytes()))).json()

    expected = predictor.predict([path]).predictions[0]
    assert answer["prob_covid"] == pytest.approx(expected.prob_covid, abs=1e-6)
    assert (answer["label"], answer["in_distribution"], answer["is_study"]) == (expected.label, True, False)
    assert answer["threshold"] == predictor.threshold
    assert [s["name"] for s in answer["slices"]] == [path.name]
    assert (answer["overlay_png"], answer["failures"]) == (None, [])


def test_cam_adds_the_overlay_and_the_slice_as_png(client, ct_png):
    answer = client.post("/api/v1/predict?cam=true", files=upload(("slice.png", ct_png))).json()

    overlay = Image.open(io.BytesIO(base64.b64decode(answer["overlay_png"])))
    seen = Image.open(io.BytesIO(base64.b64decode(answer["slice_png"])))
    assert (overlay.mode, overlay.width) == ("RGB", 256)  # 64 px slice enlarged 4x, caption below
    assert (seen.mode, seen.size) == ("L", (64, 64))
    assert answer["cam_slice"] == "slice.png"


def test_several_slices_are_one_study_and_bad_files_are_listed(client, tiny_dataset):
    paths = tiny_dataset.paths["COVID"][:3]
    files = [(p.name, p.read_bytes()) for p in paths] + [("notes.txt", b"not an image")]

    response = client.post("/api/v1/predict?cam=true", files=upload(*files))

    answer = response.json()
    assert response.status_code == 200
    assert (answer["is_study"], answer["n_slices_total"], answer["n_slices_used"]) == (True, 3, 3)
    assert answer["aggregate"] in ("mean", "max") or answer["aggregate"].startswith("top ")
    assert [s["name"] for s in answer["slices"]] == [p.name for p in paths]
    assert answer["cam_slice"] in [p.name for p in paths] and answer["overlay_png"]
    assert answer["failures"] == [
        {
            "name": "notes.txt",
            "reason": (
                "unsupported file type (content starting b'not an "
                "i'); expected PNG, JPEG, BMP, TIFF, DICOM or NIfTI"
            ),
        }
    ]


def test_a_slice_the_guard_flags_gets_no_probability(make_client, predictor, ct_png):
    flagging = copy.copy(predictor)
    flagging.detector = dataclasses.replace(predictor.detector, threshold=-1.0)  # every distance is above it

    answer = make_client(served=flagging).post("/api/v1/predict", files=upload(("photo.png", ct_png))).json()

    assert (answer["prob_covid"], answer["label"], answer["in_distribution"]) == (None, "not-ct", False)
    assert answer["message"] == not_ct_message(answer["ood_score"], -1.0)


# (id, request keyword arguments, settings overrides, status, expected detail pattern)
BAD_REQUESTS = [
    (
        "unsupported-type",
        {"files": upload(("notes.txt", b"patient notes"))},
        {},
        415,
        r"^notes\.txt: unsupported file type \(content starting b'patient '\); expected PNG, JPEG",
    ),
    (
        "empty-file",
        {"files": upload(("empty.bin", b""))},
        {},
        415,
        r"^empty\.bin: unsupported file type \(an empty file\)",
    ),
    ("empty-png", {"files": upload(("empty.png", b""))}, {}, 422, r"^empty\.png: empty file$"),
    (
        "corrupt-png",
        {"files": upload(("cut.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 40))},
        {},
        422,
        r"^cut\.png: (cannot decode image|not a readable PNG)",
    ),
    (
        "too-small",
        {"files": upload(("tiny.png", png_bytes(np.zeros((20, 31), np.uint8))))},
        {},
        422,
        r"^tiny\.png: image is 31x20 pixels; expected at least 32 on each side",
    ),
    ("broken-dicom", {"files": upload(("scan.dcm", b"\0" * 200))}, {}, 422, r"^scan\.dcm: "),
    (
        "not-multipart",
        {"json": {"image": "x"}},
        {},
        415,
        r"^request body is application/json; expected multipart/form-data",
    ),
    (
        "form-field",
        {"data": {"note": "hello"}, "files": upload(("a.png", b"x"))},
        {},
        422,
        r"^form field 'note' is not a file",
    ),
    (
        "no-file",
        {"content": b"--b--\r\n", "headers": {"content-type": "multipart/form-data; boundary=b"}},
        {},
        422,
        r"^no file in the upload",
    ),
    (
        "bad-cam",
        {"params": {"cam": "maybe"}, "files": upload(("a.png", b"x"))},
        {},
        422,
        r"^query cam: Input should be a valid boolean",
    ),
    (
        "body-too-large",
        {"files": upload(("big.png", b"\x89PNG" + b"\0" * 5000))},
        {"max_upload_bytes": 1000},
        413,
        r"^upload is [\d,]+ bytes, over the 1,000-byte limit",
    ),
    (
        "too-many-files",
        {"files": upload(("a.png", b"1"), ("b.png", b"2"), ("c.png", b"3"))},
        {"max_files": 2},
        413,
        r"^more than 2 files in one upload",
    ),
    (
        "over-pixel-limit",
        {"files": upload(("big.png", png_claiming(5000, 5000)))},
        {},
        413,
        r"^big\.png: image is 5000x5000 pixels, over the server's 16,777,216-pixel limit",
    ),
    (
        "pixel-bomb",
        {"files": upload(("bomb.png", png_claiming(30_000, 30_000)))},
        {},
        413,
        r"^bomb\.png: image is over the server's 16,777,216-pixel limit \(Image size \(900000000 pixels\)",
    ),
]


@pytest.mark.parametrize(
    ("request_kwargs", "overrides", "status", "detail"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_client_mistakes_are_4xx_with_the_reason(make_client, request_kwargs, overrides, status, detail):
    response = make_client(**overrides).post("/api/v1/predict", **request_kwargs)

    assert response.status_code == status
    assert response.json().keys() == {"detail"}
    assert re.search(detail, response.json()["detail"]), response.json()["detail"]


def test_a_streamed_body_without_length_is_cut_at_the_limit(make_client):
    client = make_client(max_upload_bytes=1000)
    body = (
        b"--b\r\nContent-Disposition: form-data; name=files; filename=a.png\r\n\r\n"
        + b"\0" * 5000
        + b"\r\n--b--\r\n"
    )

    response = client.post(
        "/api/v1/predict",
        content=iter([body[:500], body[500:]]),
        headers={"content-type": "multipart/form-data; boundary=b"},
    )

    assert response.status_code == 413
    assert response.json()["detail"] == "upload is over the 1,000-byte limit; send fewer or smaller files"


def test_uploads_never_touch_the_disk(client, monkeypatch):
    """A 2 MB upload (Starlette's form parser would spool it to a temporary file over 1 MB)
    with temp files forbidden."""

    def forbidden(*args, **kwargs):
        raise AssertionError("an upload was written to a temporary file")

    for name in ("SpooledTemporaryFile", "TemporaryFile", "NamedTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, forbidden)
    monkeypatch.setattr("starlette.formparsers.SpooledTemporaryFile", forbidden)
    noise = png_bytes(np.random.default_rng(0).integers(0, 256, (1500, 1500), dtype=np.uint8))
    assert len(noise) > 2_000_000

    response = client.post("/api/v1/predict", files=upload(("large.png", noise)))

    assert response.status_code == 200
    assert response.json()["slices"][0]["name"] == "large.png"


def test_a_full_queue_is_503_with_retry_after(client, ct_png, monkeypatch):
    async def busy(*args, **kwargs):
        raise ServerBusyError("the server is busy (64 requests waiting); retry in a few seconds")

    monkeypatch.setattr(client.app.state.pool, "predict", busy)

    response = client.post("/api/v1/predict", files=upload(("a.png", ct_png)))

    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json() == {"detail": "the server is busy (64 requests waiting); retry in a few seconds"}


def test_a_client_path_in_the_file_name_is_reduced_to_the_name(client, ct_png):
    answer = client.post("/api/v1/predict", files=upload(("C:\\Users\\dr\\scans\\slice.png", ct_png))).json()

    assert answer["slices"][0]["name"] == "slice.png"
