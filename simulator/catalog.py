"""Master data of the simulated fab: machine kinds, their sensors and their recipes.

This module owns the numbers only (units, resolutions, physical ranges, time constants,
idle setpoints and the recipe steps); `simulator.model` owns the behaviour.

Sensor names follow the `group/quantity` convention of the MQTT contract. Sensors flagged
`chamber` live in a process chamber and are named `ch1/temp`, `ch2/temp`, ...; the others
belong to the machine (`rf/forward_power`, `gas/ar_flow`, `stage/vibration`).

Normal operation keeps every `ch*/temp` inside 10..80 °C (the example alert rule of the
configuration), so that only excursions and sensor faults cross it.
"""

from __future__ import annotations

from dataclasses import dataclass

# (setpoint, tolerance) per sensor quantity; a quantity missing from a step is at idle.
Setpoints = dict[str, tuple[float, float]]


@dataclass(frozen=True)
class SensorKind:
    quantity: str  # "temp" for chamber sensors, "rf/forward_power" for machine sensors
    unit: str
    decimals: int  # resolution is 10**-decimals: values are rounded to it
    lo: float  # physical range of the transducer: no value ever leaves it
    hi: float
    tau_s: float  # first-order lag time constant towards the setpoint
    idle: tuple[float, float]  # (setpoint, tolerance) when no wafer is processed
    chamber: bool = False

    @property
    def resolution(self) -> float:
        return 10.0**-self.decimals


@dataclass(frozen=True)
class Step:
    name: str
    seconds: float
    setpoints: Setpoints


@dataclass(frozen=True)
class Recipe:
    name: str
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class MachineKind:
    prefix: str  # machine names are f"{prefix}-{NN:02d}"
    sensors: tuple[SensorKind, ...]  # in the order sensors are assigned to a machine
    recipes: tuple[Recipe, ...]

    @property
    def chamber_sensors(self) -> tuple[SensorKind, ...]:
        return tuple(k for k in self.sensors if k.chamber)


def _k(quantity, unit, decimals, lo, hi, tau_s, idle, chamber=False) -> SensorKind:
    return SensorKind(quantity, unit, decimals, lo, hi, tau_s, idle, chamber)


ETCH = MachineKind(
    prefix="etch",
    sensors=(
        _k("temp", "degC", 2, -20.0, 400.0, 8.0, (40.0, 3.0), chamber=True),
        _k("pressure", "mTorr", 2, 0.0, 1000.0, 0.8, (0.5, 0.3), chamber=True),
        _k("rf/forward_power", "W", 1, 0.0, 3000.0, 0.2, (0.0, 5.0)),
        _k("gas/ar_flow", "sccm", 2, 0.0, 500.0, 0.5, (0.0, 1.0)),
        _k("stage/vibration", "mm/s", 3, 0.0, 50.0, 0.3, (0.05, 0.03)),
        _k("rf/reflected_power", "W", 1, 0.0, 500.0, 0.2, (0.0, 2.0)),
        _k("gas/cf4_flow", "sccm", 2, 0.0, 300.0, 0.5, (0.0, 1.0)),
        _k("gas/o2_flow", "sccm", 2, 0.0, 200.0, 0.5, (0.0, 1.0)),
        _k("esc_temp", "degC", 2, -20.0, 200.0, 10.0, (30.0, 2.0), chamber=True),
        _k("he_pressure", "Torr", 2, 0.0, 40.0, 1.0, (0.0, 0.3), chamber=True),
    ),
    recipes=(
        Recipe("ETCH-A", (  # oxide etch
            Step("stabilize", 6, {"temp": (60, 3), "pressure": (30, 3), "gas/ar_flow": (100, 5),
                                  "gas/cf4_flow": (40, 2), "gas/o2_flow": (5, 0.5),
                                  "esc_temp": (40, 2), "he_pressure": (10, 0.5),
                                  "stage/vibration": (0.1, 0.05)}),
            Step("main-etch", 30, {"temp": (65, 3), "pressure": (30, 3),
                                   "rf/forward_power": (1200, 30), "rf/reflected_power": (15, 10),
                                   "gas/ar_flow": (100, 5), "gas/cf4_flow": (40, 2),
                                   "gas/o2_flow": (5, 0.5), "esc_temp": (40, 2),
                                   "he_pressure": (10, 0.5), "stage/vibration": (0.3, 0.1)}),
            Step("over-etch", 10, {"temp": (65, 3), "pressure": (20, 2),
                                   "rf/forward_power": (800, 25), "rf/reflected_power": (10, 8),
                                   "gas/ar_flow": (150, 5), "gas/cf4_flow": (20, 2),
                                   "gas/o2_flow": (10, 1), "esc_temp": (40, 2),
                                   "he_pressure": (10, 0.5), "stage/vibration": (0.25, 0.1)}),
            Step("pump-down", 5, {"temp": (60, 3), "esc_temp": (38, 2)}),
        )),
        Recipe("ETCH-B", (  # poly-silicon etch
            Step("stabilize", 5, {"temp": (55, 3), "pressure": (10, 1), "gas/ar_flow": (50, 3),
                                  "gas/o2_flow": (3, 0.5), "esc_temp": (50, 2),
                                  "he_pressure": (8, 0.5), "stage/vibration": (0.1, 0.05)}),
            Step("break-through", 5, {"temp": (55, 3), "pressure": (10, 1),
                                      "rf/forward_power": (400, 15),
                                      "rf/reflected_power": (8, 6), "gas/ar_flow": (50, 3),
                                      "gas/cf4_flow": (30, 2), "esc_temp": (50, 2),
                                      "he_pressure": (8, 0.5), "stage/vibration": (0.2, 0.1)}),
            Step("main-etch", 25, {"temp": (58, 3), "pressure": (12, 1),
                                   "rf/forward_power": (650, 20), "rf/reflected_power": (10, 8),
                                   "gas/ar_flow": (80, 4), "gas/o2_flow": (4, 0.5),
                                   "esc_temp": (50, 2), "he_pressure": (8, 0.5),
                                   "stage/vibration": (0.3, 0.1)}),
            Step("pump-down", 5, {"temp": (55, 3), "esc_temp": (45, 2)}),
        )),
    ),
)

CVD = MachineKind(
    prefix="cvd",
    sensors=(
        _k("temp", "degC", 2, -20.0, 400.0, 15.0, (65.0, 3.0), chamber=True),  # chamber wall
        _k("pressure", "mTorr", 1, 0.0, 20000.0, 1.0, (5.0, 2.0), chamber=True),
        _k("rf/forward_power", "W", 1, 0.0, 2000.0, 0.2, (0.0, 5.0)),
        _k("gas/sih4_flow", "sccm", 2, 0.0, 1000.0, 0.6, (0.0, 1.0)),
        _k("stage/vibration", "mm/s", 3, 0.0, 50.0, 0.3, (0.04, 0.03)),
        _k("gas/n2o_flow", "sccm", 1, 0.0, 10000.0, 0.6, (0.0, 5.0)),
        _k("gas/n2_flow", "sccm", 1, 0.0, 10000.0, 0.6, (500.0, 20.0)),
        _k("rf/reflected_power", "W", 1, 0.0, 300.0, 0.2, (0.0, 2.0)),
        _k("heater_temp", "degC", 2, -20.0, 600.0, 30.0, (400.0, 2.0), chamber=True),
    ),
    recipes=(
        Recipe("CVD-OX", (  # PECVD silicon oxide
            Step("heat-up", 8, {"temp": (68, 3), "pressure": (2500, 100),
                                "gas/n2_flow": (1000, 30), "heater_temp": (400, 2),
                                "stage/vibration": (0.06, 0.03)}),
            Step("deposit", 40, {"temp": (70, 3), "pressure": (2500, 100),
                                 "rf/forward_power": (300, 10), "rf/reflected_power": (5, 4),
                                 "gas/sih4_flow": (150, 5), "gas/n2o_flow": (3000, 80),
                                 "gas/n2_flow": (1000, 30), "heater_temp": (400, 2),
                                 "stage/vibration": (0.08, 0.03)}),
            Step("purge", 10, {"temp": (68, 3), "pressure": (1000, 80),
                               "gas/n2_flow": (3000, 80), "heater_temp": (400, 2)}),
        )),
        Recipe("CVD-NIT", (  # PECVD silicon nitride
            Step("heat-up", 10, {"temp": (70, 3), "pressure": (3000, 100),
                                 "gas/n2_flow": (2000, 50), "heater_temp": (380, 2),
                                 "stage/vibration": (0.06, 0.03)}),
            Step("deposit", 50, {"temp": (72, 3), "pressure": (3000, 100),
                                 "rf/forward_power": (450, 15), "rf/reflected_power": (8, 6),
                                 "gas/sih4_flow": (250, 8), "gas/n2_flow": (4000, 100),
                                 "heater_temp": (380, 2), "stage/vibration": (0.08, 0.03)}),
            Step("purge", 10, {"temp": (70, 3), "pressure": (1000, 80),
                               "gas/n2_flow": (3000, 80), "heater_temp": (380, 2)}),
        )),
    ),
)

LITHO = MachineKind(
    prefix="litho",
    sensors=(
        _k("temp", "degC", 3, 0.0, 60.0, 30.0, (22.0, 0.1), chamber=True),
        _k("pressure", "Pa", 2, -100.0, 200.0, 2.0, (15.0, 2.0), chamber=True),  # overpressure
        _k("laser/pulse_energy", "mJ", 3, 0.0, 20.0, 0.05, (0.0, 0.1)),
        _k("gas/n2_flow", "slm", 2, 0.0, 200.0, 1.0, (40.0, 2.0)),
        _k("stage/vibration", "mm/s", 3, 0.0, 5.0, 0.2, (0.01, 0.005)),
        _k("lens/temp", "degC", 3, 0.0, 60.0, 60.0, (22.0, 0.05)),
        _k("humidity", "%RH", 2, 0.0, 100.0, 20.0, (45.0, 1.0), chamber=True),
        _k("stage/overlay_error", "nm", 2, -100.0, 100.0, 0.1, (0.0, 1.5)),
    ),
    recipes=(
        Recipe("LITHO-193", (
            Step("load-align", 4, {"stage/vibration": (0.15, 0.05), "gas/n2_flow": (60, 2)}),
            Step("expose", 20, {"laser/pulse_energy": (10.0, 0.3), "gas/n2_flow": (60, 2),
                                "stage/vibration": (0.25, 0.08), "lens/temp": (22.02, 0.05),
                                "stage/overlay_error": (0.0, 2.0)}),
            Step("unload", 3, {"stage/vibration": (0.12, 0.05)}),
        )),
        Recipe("LITHO-193I", (  # immersion: longer exposure, tighter overlay
            Step("load-align", 5, {"stage/vibration": (0.15, 0.05), "gas/n2_flow": (60, 2)}),
            Step("expose", 30, {"laser/pulse_energy": (8.0, 0.25), "gas/n2_flow": (60, 2),
                                "stage/vibration": (0.3, 0.08), "lens/temp": (22.03, 0.05),
                                "humidity": (46.0, 1.0), "stage/overlay_error": (0.0, 1.2)}),
            Step("unload", 3, {"stage/vibration": (0.12, 0.05)}),
        )),
    ),
)

MACHINE_KINDS: tuple[MachineKind, ...] = (ETCH, CVD, LITHO)  # assigned round-robin
