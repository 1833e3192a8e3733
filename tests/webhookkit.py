"""A loopback webhook receiver for tests: records each post, answers the statuses it is told."""

from __future__ import annotations

import base64
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from fastapi import FastAPI, Request, Response
from faults import serve_app

SECRET = "whsec_" + base64.b64encode(b"imagegate-test-webhook-secret-32b").decode()
"""A valid Standard Webhooks secret (32 bytes)."""


@dataclass
class Post:
    """One post the receiver got."""

    headers: dict[str, str]
    body: bytes
    answered: int


@dataclass
class Receiver:
    """Answers each post with the next of ``statuses`` (then ``then``); keeps every post."""

    statuses: list[int] = field(default_factory=list)
    then: int = 200
    posts: list[Post] = field(default_factory=list)
    url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request) -> Response:
            body = await request.body()
            with self._lock:
                status = self.statuses.pop(0) if self.statuses else self.then
                self.posts.append(Post(dict(request.headers), body, status))
            return Response(status_code=status)

        return app

    def delivered(self, within_s: float = 10.0) -> Post:
        """The first post answered 2xx, waiting up to ``within_s`` for it."""
        deadline = time.monotonic() + within_s
        while True:
            with self._lock:
                ok = [post for post in self.posts if 200 <= post.answered < 300]
            if ok:
                return ok[0]
            assert time.monotonic() < deadline, f"no delivery in {within_s} s: {self.posts}"
            time.sleep(0.02)

    def wait_posts(self, count: int, within_s: float = 10.0) -> None:
        deadline = time.monotonic() + within_s
        while len(self.posts) < count:
            assert time.monotonic() < deadline, f"{len(self.posts)} posts in {within_s} s"
            time.sleep(0.02)


@contextlib.contextmanager
def receiver(statuses: list[int] | None = None) -> Iterator[Receiver]:
    """A receiver on 127.0.0.1; post to ``receiver.url``."""
    got = Receiver(statuses=list(statuses or []))
    with serve_app(got.app()) as base:
        got.url = f"{base}/hook"
        yield got
