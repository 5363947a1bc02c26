"""Who is looking: the signed-in session behind the cookie, and the CSRF check on actions.

Nothing of the dashboard but its sign-in page and static files answers without a session:
a page asks the browser to sign in first (303), anything else is a 401.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, HTTPException, Request, status
from starlette.concurrency import run_in_threadpool

from conveyor.api.deps import Caller
from conveyor.core.db import session_scope
from conveyor.dashboard import sessions
from conveyor.dashboard.sessions import SignedIn


def _load(token: str | None) -> SignedIn | None:
    with session_scope() as session:
        return sessions.load(session, token)


def login_path(request: Request) -> str:
    return str(request.url_for("dashboard.login").path)


async def signed_in(request: Request) -> SignedIn:
    who = await run_in_threadpool(_load, request.cookies.get(sessions.COOKIE))
    if who is not None:
        return who
    wants_page = request.method == "GET" and "text/html" in request.headers.get("accept", "")
    if wants_page and "hx-request" not in request.headers:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        location = f"{login_path(request)}?next={quote(target, safe='')}"
        raise HTTPException(status.HTTP_303_SEE_OTHER, "sign in first", {"Location": location})
    raise HTTPException(status.HTTP_401_UNAUTHORIZED, "sign in to the dashboard first")


SignedInDep = Annotated[SignedIn, Depends(signed_in)]


async def checked(request: Request, who: SignedInDep) -> SignedIn:
    """An action: the session's CSRF token must come with it, as a header or a form field."""
    given = request.headers.get(sessions.CSRF_HEADER)
    if given is None:
        form = await request.form()
        field = form.get(sessions.CSRF_FIELD)
        given = field if isinstance(field, str) else None
    if not sessions.same_token(who.csrf, given):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "missing or wrong CSRF token; reload the page and retry"
        )
    return who


ActionDep = Annotated[SignedIn, Depends(checked)]


async def admin_action(who: ActionDep) -> SignedIn:
    if not who.is_admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this action is for admin keys only")
    return who


AdminActionDep = Annotated[SignedIn, Depends(admin_action)]


def require_admin(who: SignedIn) -> None:
    if not who.is_admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this page is for admin keys only")


def as_caller(who: SignedIn) -> Caller:
    return Caller(owner=who.owner, is_admin=who.is_admin, key_id=who.key_id, via_api_key=True)
