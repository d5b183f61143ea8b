"""Acknowledgements kept by the dashboard itself, for an instance that has no
`POST /alerts/{id}/ack` yet: one JSON line per acknowledgement in
`{data_dir}/dashboard/acks.jsonl`, appended and fsynced before the browser is told, so an
acknowledgement survives a restart of the dashboard and of the instance. The first one of an
alert wins, as the instance's route does."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path


class AckStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._acks: dict[str, dict] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:  # a torn last line after a crash: that ack was never confirmed
                    continue
                if isinstance(entry, dict) and "id" in entry:
                    self._acks.setdefault(str(entry["id"]), entry)

    def get(self, alert_id: str) -> dict | None:
        entry = self._acks.get(alert_id)
        return None if entry is None else {"who": entry["who"], "note": entry.get("note"), "at": entry["at"]}

    def add(self, alert_id: str, *, who: str, note: str) -> dict:
        with self._lock:
            if alert_id not in self._acks:
                entry = {"id": alert_id, "who": who, "note": note or None, "at": int(time.time() * 1000)}
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a", encoding="utf-8") as out:
                    out.write(json.dumps(entry) + "\n")
                    out.flush()
                    os.fsync(out.fileno())
                self._acks[alert_id] = entry
        ack = self.get(alert_id)
        assert ack is not None
        return ack

    def fill(self, alerts: list[dict]) -> None:
        """Put the acknowledgements held here into alerts that have none from the instance."""
        for alert in alerts:
            if not alert.get("ack") and alert.get("id") is not None:
                alert["ack"] = self.get(str(alert["id"]))
