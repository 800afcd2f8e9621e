"""The labeling page: the campaign's pending queue in rank order, one answer per request, stored at once.

``create_app`` builds a FastAPI app over a label store and the campaign's raw feature store. The page
(``templates/annotate.html``) fetches each item as an HTML fragment (``templates/item.html``) rendered with
Jinja autoescaping, so item ids and other untrusted text never reach the page unescaped, and answers through
a small JSON API; each answer, skip and undo is one label-store transaction. With a token every request must
carry it (``Authorization: Bearer T`` or ``?token=T``), else it is refused with 401.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field
from starlette.middleware.trustedhost import TrustedHostMiddleware

from data import FeatureStore
from data.store import LabelAnswer, LabelStore, QueuedItem, StoreError
from flows.item_views import feature_table, image_png, item_text

TEMPLATES = Jinja2Templates(directory=Path(__file__).with_name("templates"))
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class Progress:
    round: int
    done: int
    total: int


class Answer(BaseModel):
    item_id: str
    label: int
    annotator: str = Field(min_length=1, max_length=100)


class Skip(BaseModel):
    item_id: str


class Undo(BaseModel):
    item_id: str
    action: Literal["label", "skip"]
    annotator: str = Field(min_length=1, max_length=100)


RESERVED_KEYS = ("s", "u")
"""Keys of the page's own actions (skip, undo), never a class's letter."""


def letter_keys(classes: list[str]) -> list[str | None]:
    """The key of each class beyond the digits: its first letter (lower case) when no other class starts with it
    and it is not one of ``RESERVED_KEYS``; ``None`` otherwise (a name starting with a digit or sign, say)."""
    firsts = [name[:1].lower() for name in classes]
    return [
        f if f.isalpha() and f.isascii() and f not in RESERVED_KEYS and firsts.count(f) == 1 else None for f in firsts
    ]


def progress(queue: list[QueuedItem], round_: int | None) -> Progress:
    """Answered (labeled or skipped) and queued items of ``round_`` (default: the latest round)."""
    round_ = round_ if round_ is not None else max((q.round for q in queue), default=0)
    batch = [q for q in queue if q.round == round_]
    return Progress(round_, sum(q.status != "pending" for q in batch), len(batch))


def create_app(
    store: LabelStore, campaign: str, features: FeatureStore, *, token: str | None = None, host: str = "127.0.0.1"
) -> FastAPI:
    """The labeling app of one campaign; ``token`` (when given) is required on every request.

    Without a token only requests addressed to a loopback name are served (``Host`` header), which keeps other
    web sites from reaching the page through DNS rebinding.
    """
    app = FastAPI(title=f"beliefloop labeling: {campaign}", docs_url=None, redoc_url=None, openapi_url=None)
    classes = store.classes(campaign)
    if token is None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(dict.fromkeys([*LOOPBACK_HOSTS, host])))
    else:

        @app.middleware("http")
        async def require_token(request: Request, call_next):
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            given = given or request.query_params.get("token", "")
            if not secrets.compare_digest(given.encode(), token.encode()):
                return JSONResponse({"detail": "missing or wrong token"}, status_code=401)
            return await call_next(request)

    keys = letter_keys(classes)

    def item_context(request: Request, offset: int = 0) -> dict:
        """The pending item at ``offset`` in (round, rank) order (the last one beyond the end), for the arrows."""
        queue = store.queued(campaign)
        pending = [q for q in queue if q.status == "pending"]
        offset = min(max(offset, 0), max(len(pending) - 1, 0))
        item = pending[offset] if pending else None
        context = {
            "campaign": campaign,
            "classes": classes,
            "keys": keys,
            "item": item,
            "offset": offset,
            "n_pending": len(pending),
            "progress": progress(queue, item.round if item else None),
        }
        if item is not None:
            row = int(features.row_of(item.item_id))
            if features.meta["is_image"]:
                context["image"] = base64.b64encode(image_png(features.features[row])).decode()
            else:
                context["table"] = feature_table(features, row)
                context["text"] = item_text(features, row)
            context["predicted"] = classes[item.predicted] if item.predicted is not None else None
        else:  # why nothing is pending: a round to run, or a campaign stopped as stable (stopping.when_stable)
            rounds = store.round_metrics(campaign)
            if rounds and rounds[-1].get("stopped_when_stable"):
                context["stopped_at"] = int(rounds[-1]["round"])
        return {"request": request, **context}

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request):
        return TEMPLATES.TemplateResponse(request, "annotate.html", {**item_context(request), "token": token or ""})

    @app.get("/item", response_class=HTMLResponse)
    def next_item(request: Request, offset: int = 0):
        """The pending item at ``offset`` (default the first) in (round, rank) order, as the fragment the page
        swaps in."""
        return TEMPLATES.TemplateResponse(request, "item.html", item_context(request, offset))

    @app.get("/api/queue")
    def pending() -> dict:
        queue = store.queued(campaign)
        return {
            "campaign": campaign,
            "classes": classes,
            "pending": [
                {
                    "item_id": q.item_id,
                    "round": q.round,
                    "rank": q.rank,
                    "score": q.score,
                    "epistemic": q.epistemic,
                    "aleatoric": q.aleatoric,
                    "predicted": q.predicted,
                    "probability": q.probability,
                }
                for q in queue
                if q.status == "pending"
            ],
            "progress": vars(progress(queue, None)),
        }

    @app.post("/api/labels")
    def label(answer: Answer) -> dict:
        report = store.record_labels(campaign, [LabelAnswer(answer.item_id, answer.label)], annotator=answer.annotator)
        if report.rejected:
            item_id, reason = report.rejected[0]
            raise HTTPException(422, f"item {item_id!r}: {reason}")
        return {"item_id": answer.item_id, "label": classes[answer.label]}

    @app.post("/api/skip")
    def skip(request: Skip) -> dict:
        with _refused_as_409():
            store.skip(campaign, request.item_id)
        return {"item_id": request.item_id, "skipped": True}

    @app.post("/api/undo")
    def undo(request: Undo) -> dict:
        """Withdraw the annotator's answer (kept in history) or undo a skip; the item is pending again."""
        with _refused_as_409():
            if request.action == "label":
                withdrawn = store.retract_label(campaign, request.item_id, annotator=request.annotator)
                return {"item_id": request.item_id, "withdrawn": classes[withdrawn]}
            store.unskip(campaign, request.item_id)
        return {"item_id": request.item_id, "unskipped": True}

    return app


@contextmanager
def _refused_as_409() -> Iterator[None]:
    """Turn a refused store write into an HTTP 409 that names the item and the reason."""
    try:
        yield
    except StoreError as error:
        raise HTTPException(409, str(error)) from error
