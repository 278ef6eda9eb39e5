"""The HTTP API (modelled on IBM Watson Natural Language Classifier v1) and the web page.

FastAPI on uvicorn: pydantic validates the JSON requests, python-multipart parses uploads, and
the OpenAPI description is served at /openapi.json (and /docs). Every /v1 request carries
`Authorization: Bearer <key>`; a classifier of another tenant answers 404 like an unknown id,
so ids leak nothing. Errors are JSON {"code", "error", "description"}.
"""
from __future__ import annotations

import secrets
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from gadei.serve import csvdata, tenants
from gadei.serve.db import Database
from gadei.serve.models import ModelCache
from gadei.serve.runner import TRAINING_CSV, Runner, training_curve

STATIC = Path(__file__).parent / "static"
MAX_UPLOAD = 32 * 1024 * 1024       # bytes of one request (20,000 rows of 1,024 characters fit)
MAX_COLLECTION = 30


class ApiError(Exception):
    def __init__(self, code: int, error: str, description: str = ""):
        self.code, self.error, self.description = code, error, description or error


def _error(code: int, error: str, description: str) -> JSONResponse:
    return JSONResponse({"code": code, "error": error, "description": description}, status_code=code)


class ClassifyRequest(BaseModel):
    text: str = Field(min_length=1, max_length=csvdata.MAX_TEXT, description="the text to classify")


class CollectionItem(BaseModel):
    text: str = Field(min_length=1, max_length=csvdata.MAX_TEXT)


class ClassifyCollectionRequest(BaseModel):
    collection: list[CollectionItem] = Field(min_length=1, max_length=MAX_COLLECTION)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def create_app(state: Path, max_jobs: int, max_classifiers: int = 8, cache_size: int = 16,
               runner: Runner | None = None) -> FastAPI:
    """The service over the state folder `state` (database and classifier folders)."""
    state = Path(state)
    db = Database(state / "gadei-serve.db")
    runner = runner or Runner(db, state, max_jobs)
    cache = ModelCache(cache_size)
    app = FastAPI(title="gadei serve", version="1",
                  description="Text classifiers trained on the gadei parameter server, with one fixed "
                              "recipe. The API follows IBM Watson Natural Language Classifier v1.")
    app.state.runner, app.state.db, app.state.cache = runner, db, cache

    # ---- errors: always {"code", "error", "description"} --------------------------------
    @app.exception_handler(ApiError)
    async def api_error(request, e: ApiError):
        return _error(e.code, e.error, e.description)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, e: RequestValidationError):
        parts = [f"{'.'.join(str(x) for x in err['loc'] if x != 'body') or 'body'}: {err['msg']}" for err in e.errors()]
        return _error(400, "Invalid request", "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, e: StarletteHTTPException):
        return _error(e.status_code, str(e.detail), str(e.detail))

    @app.exception_handler(Exception)
    async def internal(request, e: Exception):
        # the same JSON shape as every other error; the details (paths of the state folder)
        # stay in the service's log, where uvicorn writes the traceback
        return _error(500, "Internal error", "the service could not answer; its log has the details")

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_UPLOAD:
            return _error(413, "Request too large", f"the request has {int(length):,} bytes; at most "
                                                     f"{MAX_UPLOAD:,} are accepted")
        return await call_next(request)

    # ---- authentication and ownership ----------------------------------------------------
    def tenant(request: Request) -> str:
        name = tenants.authenticate(db, request.headers.get("authorization"))
        if name is None:
            raise ApiError(401, "Unauthorized", "send 'Authorization: Bearer <key>' with a key from "
                                                "`gadei tenants add NAME`")
        return name

    def owned(cid: str, who: str) -> dict:
        rec = db.classifier(cid, tenant=who)
        if rec is None:      # unknown or another tenant's: the same answer
            raise ApiError(404, "Not found", f"no classifier with id {cid!r}")
        return rec

    def describe(rec: dict, request: Request, full: bool) -> dict:
        out = {"classifier_id": rec["id"], "name": rec["name"], "language": rec["language"],
               "created": _iso(rec["created"]), "url": str(request.url_for("get_classifier", cid=rec["id"])),
               "status": rec["status"]}
        if full:
            out["status_description"] = rec["status_description"] or _waiting(rec)
            out["training"] = {**runner.progress(rec), "rows": rec["rows"], "classes": rec["classes"]}
            if rec["status"] == "Available":
                out["metrics"] = rec["metrics"]
        return out

    def _waiting(rec: dict) -> str:
        pos = runner.queue_position(rec["id"]) if rec["status"] == "Training" else None
        return f"waiting to train: number {pos} in the queue" if pos else ""

    def available(cid: str, who: str):
        rec = owned(cid, who)
        if rec["status"] != "Available":
            raise ApiError(409, "Classifier not ready", f"classifier {cid} is {rec['status']}: "
                           + ("wait until it is Available" if rec["status"] == "Training" else rec["status_description"]))
        return cache.get(cid, runner.folder(cid))

    # ---- routes --------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    upload_schema = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["training_data", "training_metadata"],
        "properties": {"training_data": {"type": "string", "format": "binary",
                                         "description": "CSV, UTF-8, no header: text,class per row"},
                       "training_metadata": {"type": "string", "format": "binary",
                                             "description": 'JSON: {"name": "...", "language": "en"}'}}}}}}}

    @app.post("/v1/classifiers", status_code=201, openapi_extra=upload_schema)
    async def create_classifier(request: Request, who: str = Depends(tenant)):
        try:
            form = await request.form(max_files=2, max_fields=2)
        except Exception as e:       # python-multipart's parse errors, too many parts
            raise ApiError(400, "Invalid upload", f"expected multipart/form-data with training_data and "
                                                  f"training_metadata ({e})")
        try:
            data, meta = form.get("training_data"), form.get("training_metadata")
            if data is None:
                raise ApiError(400, "Missing training data", "the form has no training_data part (the CSV)")
            data = await data.read() if hasattr(data, "read") else data.encode()
            meta = await meta.read() if hasattr(meta, "read") else meta
        finally:
            await form.close()
        if len(data) > MAX_UPLOAD:
            raise ApiError(413, "Request too large", f"training_data has {len(data):,} bytes; at most {MAX_UPLOAD:,}")
        try:
            metadata = csvdata.parse_metadata(meta)
            training = await run_in_threadpool(csvdata.parse_training_csv, data)
        except csvdata.CsvError as e:
            raise ApiError(400, "Invalid training data", str(e)) from None
        cid = secrets.token_hex(8)
        folder = runner.folder(cid)
        folder.mkdir(parents=True, mode=0o700)
        (folder / TRAINING_CSV).write_text(training.to_csv(), encoding="utf-8")
        rec = {"id": cid, "tenant": who, "name": metadata["name"], "language": metadata["language"],
               "created": time.time(), "status": "Training", "rows": len(training.rows),
               "classes": len(training.classes), "planned_updates": runner.recipe.planned_updates(len(training.rows)),
               "status_description": ""}
        if not db.add_classifier(rec, limit=max_classifiers):
            shutil.rmtree(folder, ignore_errors=True)
            raise ApiError(429, "Too many classifiers", f"a tenant may have at most {max_classifiers} "
                                                        "classifiers; delete one first")
        return JSONResponse(describe(db.classifier(cid), request, full=False), status_code=201)

    @app.get("/v1/classifiers")
    def list_classifiers(request: Request, who: str = Depends(tenant)):
        return {"classifiers": [describe(r, request, full=False) for r in db.classifiers(tenant=who)]}

    @app.get("/v1/classifiers/{cid}", name="get_classifier")
    def get_classifier(cid: str, request: Request, who: str = Depends(tenant)):
        return describe(owned(cid, who), request, full=True)

    @app.get("/v1/classifiers/{cid}/training_curve")
    def get_curve(cid: str, who: str = Depends(tenant)):
        """Loss and validation accuracy over updates (from the job's metrics.jsonl): not in Watson NLC."""
        owned(cid, who)
        return {"classifier_id": cid, "points": training_curve(runner.folder(cid))}

    @app.post("/v1/classifiers/{cid}/classify")
    def classify(cid: str, body: ClassifyRequest, who: str = Depends(tenant)):
        classes = available(cid, who).classify([body.text])[0]
        return {"classifier_id": cid, "text": body.text, "top_class": classes[0]["class_name"],
                "classes": classes}

    @app.post("/v1/classifiers/{cid}/classify_collection")
    def classify_collection(cid: str, body: ClassifyCollectionRequest, who: str = Depends(tenant)):
        texts = [item.text for item in body.collection]
        results = available(cid, who).classify(texts)
        return {"classifier_id": cid, "collection": [
            {"text": t, "top_class": cs[0]["class_name"], "classes": cs} for t, cs in zip(texts, results)]}

    @app.delete("/v1/classifiers/{cid}")
    def delete_classifier(cid: str, who: str = Depends(tenant)):
        owned(cid, who)
        db.delete(cid)           # first: the queue then never starts it again
        cache.drop(cid)
        runner.cancel(cid)
        return {}

    return app
