"""The app: its own routes and users, with Conveyor's job routes mounted under /conveyor.

DATABASE_URL=... CONVEYOR_REDIS_URL=... uvicorn billing_app.main:app
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException, status
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing_app.db import get_session
from billing_app.models import User
from conveyor import Caller, Conveyor, Dashboard, Submission, submit_async

SessionDep = Annotated[Session, Depends(get_session)]


def current_user(session: SessionDep, authorization: Annotated[str, Header()] = "") -> User:
    """The app's own authentication: `Authorization: Bearer <user token>`."""
    token = authorization.removeprefix("Bearer ").strip()
    digest = hashlib.sha256(token.encode()).hexdigest()
    user = session.scalar(select(User).where(User.token_hash == digest)) if token else None
    if user is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "sign in with your user token")
    return user


UserDep = Annotated[User, Depends(current_user)]


def conveyor_caller(user: UserDep) -> Caller:
    # Each user sees their own jobs; the app's admins see everyone's and the dead letters.
    return Caller(owner=f"user:{user.id}", is_admin=user.is_admin)


conveyor = Conveyor(owner=conveyor_caller)
app = FastAPI(title="Billing", lifespan=conveyor.lifespan)
app.include_router(conveyor.router, prefix="/conveyor")
# Operators sign in to the dashboard with a Conveyor API key (`conveyor keys create ops --admin`).
app.include_router(Dashboard(conveyor).router, prefix="/conveyor/dashboard")


class NewUser(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    billing_email: str | None = None
    is_admin: bool = False


class Invoice(BaseModel):
    amount_cents: int = Field(gt=0)


@app.post("/users", status_code=status.HTTP_201_CREATED)
def create_user(body: NewUser, session: SessionDep) -> dict[str, object]:
    token = secrets.token_urlsafe(24)
    user = User(
        name=body.name,
        billing_email=body.billing_email,
        is_admin=body.is_admin,
        token_hash=hashlib.sha256(token.encode()).hexdigest(),
    )
    session.add(user)
    session.commit()
    return {"id": user.id, "token": token}


@app.put("/me/billing-email")
def set_billing_email(email: Annotated[str, Header()], user: UserDep, session: SessionDep) -> None:
    session.get_one(User, user.id).billing_email = email
    session.commit()


@app.post("/me/invoices", status_code=status.HTTP_202_ACCEPTED)
async def send_invoice(body: Invoice, user: UserDep) -> dict[str, str]:
    # The ledger row, then the message: the job is visible the moment this returns.
    job = await submit_async(
        Submission(
            task_name="billing_app.send_invoice",
            args=[user.id, body.amount_cents],
            owner=f"user:{user.id}",
        )
    )
    return {"job_id": job.id, "url": f"/conveyor/api/v1/jobs/{job.id}"}
