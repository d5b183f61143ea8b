"""Recipe reloads while running: a file is read once its writer is done, and history stays."""

import threading

from alerts.service import Alerting
from core.clock import ManualClock
from fabtier.config import settings_from_mapping
from tiers.keys import SensorKeys

T0 = 1_764_000_000_000


def version(name: str, effective: int, temp: float) -> str:
    return (f'[[recipes]]\nname = "ETCH-A"\nversion = "{name}"\neffective = {effective}\n'
            f'[[recipes.steps]]\nname = "s"\nduration = "1h"\nlimits = {{ temp = [{temp}, 3.0] }}\n')


def test_reload_waits_for_a_stable_file_and_refuses_to_rewrite_history(tmp_path):
    path = tmp_path / "recipes.toml"
    path.write_text(version("1", T0 - 1000, 60.0))
    settings = settings_from_mapping({"data_dir": str(tmp_path / "data"), "alerts": {"recipes": str(path)}}, env={})
    alerting = Alerting(settings, SensorKeys(), clock=ManualClock(T0), lock=threading.Lock(), sinks=[])
    assert alerting.reload_recipes() is False  # unchanged

    path.write_text("")  # a writer that truncated and has not written yet
    assert alerting.reload_recipes() is False
    path.write_text(version("1", T0 - 1000, 60.0) + version("2", T0 + 1000, 70.0))
    assert alerting.reload_recipes() is False  # changed since the last look: not yet
    assert alerting.reload_recipes() is True  # the same for one check: read
    assert alerting.recipe_reload_errors == 0 and alerting.book.get("ETCH-A", "2") is not None

    path.write_text(version("1", T0 - 1000, 50.0) + version("2", T0 + 1000, 70.0) + "# edited\n")
    alerting.reload_recipes()
    assert alerting.reload_recipes() is False
    assert alerting.recipe_reload_errors == 1 and "ETCH-A v1 is in effect and was changed" in alerting.last_reload_error
    assert alerting.book.get("ETCH-A", "1").steps[0].limits["temp"] == (60.0, 3.0)  # the old book stays
