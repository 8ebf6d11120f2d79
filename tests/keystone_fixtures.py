"""The Keystone of the tests (:mod:`apps.keystone_lab`) as fixtures' helpers, and an API session per persona."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from apps.keystone_lab import (
    KEYSTONE_VENV,
    PASSWORD,
    PERSONAS,
    Keystone,
    keystone_controller,
    keystone_problem,
    start_keystone,
)
from apps.lab.controller import ControllerProcess

__all__ = ["KEYSTONE_VENV", "PASSWORD", "PERSONAS", "Keystone", "Session", "keystone_controller",
           "keystone_problem", "running_keystone", "session"]


class Session:
    """Real HTTP to the API with one token (or none)."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url
        self.http = requests.Session()
        if token:
            self.http.headers["X-Auth-Token"] = token

    def call(self, method: str, path: str, body: Any = None, **headers: str) -> tuple[int, Any]:
        """One request: (status, decoded JSON body or None)."""
        resp = self.http.request(method, self.url + path, json=body, headers=headers, timeout=30)
        try:
            return resp.status_code, resp.json() if resp.content else None
        except ValueError:
            return resp.status_code, resp.text

    def create(self, member: str, collection: str | None = None, **attrs: Any) -> dict:
        """POST a resource, which must succeed; returns it."""
        collection = collection or f"{member}s"
        status, body = self.call("POST", f"/v2.0/{collection}", {member: attrs})
        assert status == 201, (status, body)
        return body[member]


def session(keystone: Keystone, ctl: ControllerProcess, user: str | None) -> Session:
    """An HTTP session to the controller's API acting as ``user`` (None: no token), one token per user."""
    if user is not None and user not in keystone.tokens:
        keystone.tokens[user] = keystone.token(user)
    return Session(ctl.api_url, keystone.tokens.get(user) if user else None)


def running_keystone(workdir: Path) -> Iterator[Keystone]:
    """:func:`start_keystone` for a fixture: stopped (and its files removed) at the end."""
    keystone = start_keystone(workdir)
    try:
        yield keystone
    finally:
        keystone.stop()
        shutil.rmtree(workdir, ignore_errors=True)
