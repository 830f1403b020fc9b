"""Dashboard accounts: the statements behind Store's user methods, over one connection."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from kmsgate.store.errors import UserNotFound
from kmsgate.store.records import User
from kmsgate.store.schema import users


def _user(row: Row[Any]) -> User:
    m = row._mapping
    return User(
        name=m["name"],
        password_hash=m["password_hash"],
        is_admin=bool(m["is_admin"]),
        created=m["created"],
        disabled=bool(m["disabled"]),
    )


async def insert_user(
    conn: AsyncConnection, name: str, password_hash: str, *, is_admin: bool
) -> None:
    """Insert an enabled account created now (IntegrityError when the name is taken)."""
    await conn.execute(
        insert(users).values(
            name=name,
            password_hash=password_hash,
            is_admin=is_admin,
            created=datetime.now(UTC),
            disabled=False,
        )
    )


async def find_user(conn: AsyncConnection, name: str) -> User | None:
    """One account by exact name."""
    row = (await conn.execute(select(users).where(users.c.name == name))).first()
    return None if row is None else _user(row)


async def update_password(conn: AsyncConnection, name: str, password_hash: str) -> None:
    """Replace an account's password hash; UserNotFound when there is none."""
    result = await conn.execute(
        update(users).where(users.c.name == name).values(password_hash=password_hash)
    )
    if result.rowcount == 0:
        raise UserNotFound(name)


async def delete_user(conn: AsyncConnection, name: str) -> None:
    """Delete an account; UserNotFound when there is none."""
    result = await conn.execute(delete(users).where(users.c.name == name))
    if result.rowcount == 0:
        raise UserNotFound(name)


async def admin_exists(conn: AsyncConnection) -> bool:
    """Whether an enabled administrator account exists."""
    query = (
        select(users.c.name).where(users.c.is_admin.is_(True), users.c.disabled.is_(False)).limit(1)
    )
    return (await conn.execute(query)).first() is not None


async def all_users(conn: AsyncConnection) -> list[User]:
    """Every account, by name."""
    rows = await conn.execute(select(users).order_by(users.c.name))
    return [_user(r) for r in rows]
