"""The local mosquitto's snapshots: every second by default (the demo's and the tests' broker),
only at its stop for the benches (`NO_AUTOSAVE`), which queue a whole run's backlog."""

import subprocess
import time

import pytest

from fabtier.broker import NO_AUTOSAVE, LocalBroker, find_mosquitto

pytestmark = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed")


@pytest.mark.parametrize("autosave_s", [1, NO_AUTOSAVE])
def test_the_broker_snapshots_while_running_only_when_asked_and_always_when_stopped(tmp_path, autosave_s):
    broker = LocalBroker(tmp_path / "broker", autosave_s=autosave_s).start()
    try:
        subprocess.run(["mosquitto_pub", "-p", str(broker.port), "-t", "fab/etch-01", "-m", "{}", "-q", "1", "-r"],
                       check=True, timeout=10)
        snapshot = tmp_path / "broker" / "mosquitto.db"
        deadline = time.monotonic() + 3  # three intervals of a one-second autosave
        while not snapshot.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert snapshot.exists() == (autosave_s != NO_AUTOSAVE)
    finally:
        broker.stop()
    assert snapshot.exists()  # saved at the stop either way: a restart finds its sessions
