"""What the tiering jobs need of the process that runs them (`fabtier.pipeline.Pipeline` is
one): its settings and clock, the lake, the audit trail, the warm store, the seal.

A protocol, so that `lifecycle/` depends on the parts below it and never on the service
that wires them.
"""

from __future__ import annotations

import threading
from typing import Protocol

from core.protocols import Clock
from core.settings import Settings
from lifecycle.audit import AuditLog
from tiers.cold import ColdLake, SealReport
from tiers.warm import WarmStore


class JobHost(Protocol):
    @property
    def settings(self) -> Settings: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def lake(self) -> ColdLake: ...

    @property
    def audit(self) -> AuditLog: ...

    @property
    def warm(self) -> WarmStore | None: ...

    @property
    def seal_lock(self) -> threading.Lock:
        """Held by every job that writes or deletes this writer's lake files."""
        ...

    def hidden_segments(self) -> set[int]:
        """Log segments whose lake files readers must not see yet."""
        ...

    def seal(self) -> SealReport: ...
