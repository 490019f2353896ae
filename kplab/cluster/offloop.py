"""`off_loop`: netlink from a notebook.  A Jupyter kernel's thread runs an asyncio loop, and
pyroute2's synchronous API cannot run inside a running loop, so everything that talks netlink
is handed to one worker thread there (and runs in place everywhere else)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kplab-netlink")


def off_loop(fn: Callable[..., T]) -> Callable[..., T]:
    """Run `fn` on a worker thread when the caller's thread runs an asyncio loop."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return fn(*args, **kwargs)
        return _worker.submit(fn, *args, **kwargs).result()

    return wrapper
