"""The web page at ``GET /`` (``static/index.html``): a form for each input of the served
model, built in the browser from ``GET /v1/model``."""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter()


@cache
def page_html() -> str:
    return resources.files(__package__).joinpath("static/index.html").read_text("utf-8")


@router.get("/", response_class=HTMLResponse)
async def page() -> HTMLResponse:
    return HTMLResponse(page_html())
