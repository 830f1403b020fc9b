"""Dashboard sessions held in the database: created at login, deleted at logout."""

from __future__ import annotations

import hashlib
from datetime import datetime

from sqlalchemy import delete, insert, select

from kmsgate.store.database import Store
from kmsgate.store.schema import web_sessions


def session_key(token: str) -> str:
    """The row id of a session token (SHA-256 hex): the database never holds the token."""
    return hashlib.sha256(token.encode()).hexdigest()


class SessionStore:
    """Repository functions for web sessions over an open Store (same engine)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def create(self, token: str, username: str, now: datetime, expires: datetime) -> None:
        """Record a new session; sessions expired by `now` are deleted on the way."""
        async with self._store._write() as conn:
            await conn.execute(delete(web_sessions).where(web_sessions.c.expires_at <= now))
            await conn.execute(
                insert(web_sessions).values(
                    id=session_key(token), username=username, created_at=now, expires_at=expires
                )
            )

    async def user_of(self, token: str, now: datetime) -> str | None:
        """The user name of a live session; None when revoked, expired or unknown."""
        query = select(web_sessions.c.username).where(
            web_sessions.c.id == session_key(token), web_sessions.c.expires_at > now
        )
        async with self._store._read() as conn:
            return (await conn.execute(query)).scalar_one_or_none()

    async def revoke(self, token: str) -> bool:
        """End one session; False when there was none."""
        async with self._store._write() as conn:
            result = await conn.execute(
                delete(web_sessions).where(web_sessions.c.id == session_key(token))
            )
            return bool(result.rowcount)

    async def revoke_user(self, username: str) -> int:
        """End every session of a user; returns how many there were."""
        async with self._store._write() as conn:
            result = await conn.execute(
                delete(web_sessions).where(web_sessions.c.username == username)
            )
            return int(result.rowcount)
