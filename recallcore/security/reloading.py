"""A value loaded from a file and loaded again when the file changes (or on request).

A file that no longer parses keeps the previous value, and the failure is
logged once per change of the file, naming what is wrong.
"""

import logging
import os
import pathlib
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

CHECK_EVERY = 1.0  # seconds between looks at the file's modification time


class Reloading(Generic[T]):
    """`current()` is the latest value that loaded; the first load's errors are raised."""

    def __init__(self, path: pathlib.Path, load: Callable[[pathlib.Path], T]) -> None:
        self.path = pathlib.Path(path)
        self._load = load
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._value = load(self.path)
        self._checked = time.monotonic()

    def _stat(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return st.st_mtime_ns, st.st_size, st.st_ino

    def current(self) -> T:
        now = time.monotonic()
        if now - self._checked >= CHECK_EVERY:
            self._checked = now
            self.reload(only_if_changed=True)
        return self._value

    def reload(self, only_if_changed: bool = False) -> bool:
        """Load the file again; True when a new value took effect."""
        with self._lock:
            try:
                stamp = self._stat()
            except OSError as exc:
                log.warning("%s: %s; keeping the previous one", self.path, exc)
                return False
            if only_if_changed and stamp == self._stamp:
                return False
            self._stamp = stamp
            try:
                self._value = self._load(self.path)
            except Exception as exc:  # a broken file keeps the previous value
                log.warning("%s did not load, keeping the previous one: %s", self.path, exc)
                return False
            log.info("%s reloaded", self.path)
            return True
