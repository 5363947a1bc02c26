"""What an operator does from the dashboard: sign in and out, cancel, replay, delete, pause.

Every action is a form POST carrying the session's CSRF token, answered with a redirect to
the page that shows its outcome (so a reload never repeats it).
"""

from __future__ import annotations

import secrets

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from conveyor.api.rate_limit import check_auth_block, record_auth_failure
from conveyor.core import api_keys, dead_letters, jobs, queue_control
from conveyor.core.bulk_replay import submit_replay
from conveyor.core.db import session_scope
from conveyor.core.ledger import get_job
from conveyor.core.schedules import service as schedules
from conveyor.core.schedules.scheduler import submit_job
from conveyor.core.workloads import UnknownQueue
from conveyor.dashboard import sessions
from conveyor.dashboard.access import ActionDep, AdminActionDep
from conveyor.dashboard.pages import base_path
from conveyor.dashboard.render import render
from conveyor.dashboard.views import letter_filter
from conveyor.webhooks import service as webhooks

MAX_KEY_LENGTH = 200


def _back(request: Request, path: str) -> RedirectResponse:
    return RedirectResponse(base_path(request) + path, status.HTTP_303_SEE_OTHER)


def _safe_next(request: Request, target: str | None) -> str:
    """Only a path inside the dashboard: never another site after signing in."""
    base = base_path(request)
    if target and target.startswith(base + "/") and "//" not in target and "\\" not in target:
        return target
    return base + "/"


def _login_page(request: Request, error: str | None, target: str, code: int) -> HTMLResponse:
    token = secrets.token_urlsafe(32)
    html = render(
        "login.html",
        {"base": base_path(request), "csrf": token, "error": error, "next": target},
    )
    response = HTMLResponse(html, status_code=code, headers={"cache-control": "no-store"})
    response.set_cookie(
        sessions.LOGIN_COOKIE, token, max_age=1800, path=base_path(request) + "/",
        httponly=True, samesite="strict", secure=request.url.scheme == "https",
    )  # fmt: skip
    return response


def _sign_in(plaintext: str) -> tuple[str, sessions.SignedIn] | None:
    with session_scope() as session:
        record = api_keys.authenticate(session, plaintext)
        return sessions.start(record) if record is not None else None


def _not_found(what: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"{what} not found")


def build_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/login", name="dashboard.login")
    async def login_form(request: Request) -> HTMLResponse:
        return _login_page(
            request, None, _safe_next(request, request.query_params.get("next")), 200
        )

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = await request.form()
        target = _safe_next(request, str(form.get("next") or ""))
        expected = request.cookies.get(sessions.LOGIN_COOKIE) or ""
        if not expected or not sessions.same_token(expected, str(form.get("csrf_token") or "")):
            return _login_page(request, "The form expired; sign in again.", target, 403)
        address = request.client.host if request.client else "unknown"
        check_auth_block(address)
        plaintext = str(form.get("api_key") or "").strip()
        found = None
        if 0 < len(plaintext) <= MAX_KEY_LENGTH:
            found = await run_in_threadpool(_sign_in, plaintext)
        if found is None:
            record_auth_failure(address)
            return _login_page(request, "That API key is not valid or was revoked.", target, 401)
        token, _ = found
        response = RedirectResponse(target, status.HTTP_303_SEE_OTHER)
        response.set_cookie(
            sessions.COOKIE, token, max_age=sessions.lifetime_seconds(),
            path=base_path(request) + "/", httponly=True, samesite="strict",
            secure=request.url.scheme == "https",
        )  # fmt: skip
        response.delete_cookie(sessions.LOGIN_COOKIE, path=base_path(request) + "/")
        return response

    @router.post("/logout")
    async def logout(request: Request, _: ActionDep) -> Response:
        await run_in_threadpool(sessions.end, request.cookies.get(sessions.COOKIE))
        response = _back(request, "/login")
        response.delete_cookie(sessions.COOKIE, path=base_path(request) + "/")
        return response

    @router.post("/jobs/{job_id}/cancel")
    async def cancel_job(job_id: str, request: Request, who: ActionDep) -> Response:
        def run() -> None:
            with session_scope() as session:
                job = get_job(session, job_id, None if who.is_admin else who.owner)
                if job is None:
                    raise _not_found("job")
                jobs.cancel(session, job)

        await run_in_threadpool(run)
        return _back(request, f"/jobs/{job_id}")

    @router.post("/dead-letters/replay-matching")
    async def replay_matching(request: Request, who: AdminActionDep) -> Response:
        form = await request.form()
        fields = {key: str(value) for key, value in form.items() if isinstance(value, str)}
        try:
            expected = int(fields.pop("expected", ""))
        except ValueError:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT, "expected: the confirmed count is missing"
            ) from None
        if not fields.get("failed_before"):
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                "failed_before: confirm from the count page, which fixes it",
            )
        where = letter_filter(fields)
        if expected < 1:
            return _back(request, "/dead-letters")
        job_id = await run_in_threadpool(submit_replay, where, expected, who.owner)
        return _back(request, f"/jobs/{job_id}")

    @router.post("/dead-letters/{letter_id}/replay")
    async def replay_letter(letter_id: str, request: Request, _: AdminActionDep) -> Response:
        def run() -> str:
            with session_scope() as session:
                letter = dead_letters.get(session, letter_id)
                if letter is None:
                    raise _not_found("dead letter")
                job = jobs.replay(session, letter)
                session.commit()
                return job.id

        return _back(request, f"/jobs/{await run_in_threadpool(run)}")

    @router.post("/dead-letters/{letter_id}/delete")
    async def delete_letter(letter_id: str, request: Request, _: AdminActionDep) -> Response:
        def run() -> None:
            with session_scope() as session:
                letter = dead_letters.get(session, letter_id)
                if letter is None:
                    raise _not_found("dead letter")
                dead_letters.delete_letter(session, letter)

        await run_in_threadpool(run)
        return _back(request, "/dead-letters")

    @router.post("/queues/{name}/{action}")
    async def queue_action(
        name: str, action: str, request: Request, who: AdminActionDep
    ) -> Response:
        if action not in ("pause", "resume"):
            raise _not_found("action")

        def run() -> None:
            with session_scope() as session:
                if action == "pause":
                    queue_control.pause(session, name, who.key_name)
                else:
                    queue_control.resume(session, name)
            # Committed: a worker that misses this catches up at its next heartbeat.
            queue_control.announce(name, paused=action == "pause")

        try:
            await run_in_threadpool(run)
        except UnknownQueue as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
        return _back(request, "/queues")

    @router.post("/schedules/{schedule_id}/{action}")
    async def schedule_action(
        schedule_id: str, action: str, request: Request, who: ActionDep
    ) -> Response:
        if action not in ("pause", "resume", "trigger"):
            raise _not_found("action")

        def run() -> str | None:
            with session_scope() as session:
                schedule = schedules.get(session, schedule_id, None if who.is_admin else who.owner)
                if schedule is None:
                    raise _not_found("schedule")
                if action == "trigger":
                    return schedules.trigger(session, schedule, submit_job).job_id
                schedules.set_enabled(session, schedule, action == "resume")
                return None

        job_id = await run_in_threadpool(run)
        return _back(request, f"/jobs/{job_id}" if job_id else "/schedules")

    @router.post("/webhooks/{endpoint_id}/{action}")
    async def webhook_action(
        endpoint_id: str, action: str, request: Request, who: ActionDep
    ) -> Response:
        if action not in ("test", "enable", "disable"):
            raise _not_found("action")

        def run() -> None:
            with session_scope() as session:
                endpoint = webhooks.get_endpoint(
                    session, endpoint_id, None if who.is_admin else who.owner
                )
                if endpoint is None:
                    raise _not_found("webhook endpoint")
                if action == "test":
                    if not endpoint.enabled:
                        raise HTTPException(status.HTTP_409_CONFLICT, "enable the endpoint first")
                    webhooks.send_test(session, endpoint)
                else:
                    webhooks.update_endpoint(session, endpoint, enabled=action == "enable")
                session.commit()

        await run_in_threadpool(run)
        return _back(request, "/webhooks")

    return router
