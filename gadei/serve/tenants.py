"""Tenants and their API keys.

A key is 32 random bytes (URL-safe base64 after a `gadei_` prefix), shown once when the tenant
is added and stored only as its SHA-256. A slow password hash (bcrypt, scrypt) guards
low-entropy secrets against guessing; a 256-bit random key cannot be guessed, so one SHA-256
suffices and keeps the check of every request cheap.
"""
from __future__ import annotations

import hashlib
import re
import secrets

from gadei.serve.db import Database

KEY_PREFIX = "gadei_"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def add(db: Database, name: str) -> str:
    """Add tenant `name`; return its new API key (the only time it exists in clear)."""
    if not NAME_RE.match(name):
        raise ValueError(f"invalid tenant name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    db.add_tenant(name, hash_key(key))
    return key


def authenticate(db: Database, authorization: str | None) -> str | None:
    """The tenant an `Authorization: Bearer <key>` header belongs to, or None."""
    if not authorization:
        return None
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return None
    return db.tenant_by_key_hash(hash_key(key.strip()))
