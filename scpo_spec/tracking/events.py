"""TensorBoard event files in RUN/tensorboard/, one new file per `scpo train` (a resume adds one).

Written synchronously with tensorboard's own record framing and protobufs (not its background
writer thread, whose failures surface late, as a thread traceback): each point is one Event whose
Summary holds every value at that step, flushed at once so a live TensorBoard sees it.  A write
that fails raises OSError here; `Tracking` turns that into one warning."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from scpo_spec.tracking.scalars import Point

_opened = 0  # files opened by this process: part of the name, so two in one second differ


class EventWriter:
    """Appends points to a fresh event file in `folder` (created if needed)."""

    def __init__(self, folder: Path):
        global _opened
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.record_writer import RecordWriter
        self._Event, self._Summary = Event, Summary
        folder.mkdir(parents=True, exist_ok=True)
        _opened += 1
        # the name TensorBoard's writers use: it reads a folder's files in name order
        name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
                f"{os.getpid()}.{_opened}")
        self.path = folder / name
        self._file = open(self.path, "xb")  # never another writer's file
        self._records = RecordWriter(self._file)
        self._write(Event(wall_time=time.time(), file_version="brain.Event:2"))

    def write(self, point: Point) -> None:
        summary = self._Summary(value=[self._Summary.Value(tag=tag, simple_value=value)
                                       for tag, value in point.values.items()])
        self._write(self._Event(wall_time=time.time(), step=point.step, summary=summary))

    def _write(self, event) -> None:
        self._records.write(event.SerializeToString())
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
