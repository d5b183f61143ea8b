"""Sensor keys: a dense integer id for every (machine, sensor) seen by this process."""

from __future__ import annotations

import array
import itertools
from typing import cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class SensorKeys:
    """Interns (machine, sensor) pairs; ids are process-local and never written to disk."""

    _instances = itertools.count()

    def __init__(self) -> None:
        # Ids mean something only within one table: caches of ids made elsewhere (the
        # codec's sensor layouts) are keyed by this token as well.
        self.token = next(SensorKeys._instances)
        # Each machine's sensors and their ids, in the order they appeared: a dict a machine,
        # not one keyed by (machine, sensor) tuples, which made a tuple for every key and for
        # every name looked up (the first batches of a fab's 100,000 sensors: ~2 us a key).
        self._ids: dict[str, dict[str, int]] = {}
        self.machines: list[str] = []
        self.sensors: list[str] = []
        self._dictionaries: tuple | None = None  # (keys covered, codes and names per column)
        # Each key's machine and sensor as codes into the distinct names in first-seen order
        # (kept as keys are added: no sort of every name when one more appears).
        self._code_of: tuple[dict[str, int], dict[str, int]] = ({}, {})
        self._distinct: tuple[list[str], list[str]] = ([], [])
        self._codes_by_key = (array.array("i"), array.array("i"))  # 4 bytes a key, not an int object
        self._name_codes = (0, np.empty(0, np.int32), pa.array([], pa.string()),
                            np.empty(0, np.int32), pa.array([], pa.string()))

    def __len__(self) -> int:
        return len(self.machines)

    def id_of(self, machine: str, sensor: str) -> int:
        found = self.lookup(machine, sensor)
        if found is None:
            found = len(self.machines)
            self._add_keys(machine, [sensor])
        return found

    def lookup(self, machine: str, sensor: str) -> int | None:
        of_machine = self._ids.get(machine)
        return of_machine.get(sensor) if of_machine is not None else None

    def of_machine(self, machine: str) -> list[tuple[str, int]]:
        """(sensor, key id) of every key of `machine`, in the order they appeared (copied in one
        step, `dict.copy`: safe beside the writer, which only adds)."""
        of_machine = self._ids.get(machine)
        return list(of_machine.copy().items()) if of_machine is not None else []

    def ids_local(self, machine: str, sensor_names: list[str]) -> np.ndarray:
        """Key id of each name of a batch's sensor dictionary."""
        ids = self._ids.get(machine)
        if ids is None:  # its first batch: every name new, ids in a row
            distinct = list(dict.fromkeys(sensor_names))
            first = len(self.machines)
            self._add_keys(machine, distinct)
            if len(distinct) == len(sensor_names):
                return np.arange(first, first + len(distinct), dtype=np.int32)
            ids = self._ids[machine]
        found = list(map(ids.get, sensor_names))
        if None in found:  # sensors new to a known machine
            self._add_keys(machine, list(dict.fromkeys(n for n, f in zip(sensor_names, found, strict=True) if f is None)))
            found = list(map(ids.__getitem__, sensor_names))
        return np.array(found, dtype=np.int32)

    def _add_keys(self, machine: str, sensors: list[str]) -> None:
        """New keys for `sensors` (distinct, none known yet) of `machine` (`id_of` adds one),
        list by list: a fab's 100,000 sensors one `id_of` at a time held the ingest thread
        ~0.4 s in its first seconds (`fabtier bench ingest`, py-spy). Codes first and ids
        last: a reader beside this never sees an id whose codes are missing."""
        (machine_code_of, sensor_code_of), (machines, sensor_names) = self._code_of, self._distinct
        machine_code = machine_code_of.get(machine)
        if machine_code is None:
            machine_code = machine_code_of[machine] = len(machines)
            machines.append(machine)
        found: list[int | None] = list(map(sensor_code_of.get, sensors))
        if None in found:  # names no machine had (`sensors` are distinct)
            for at, sensor in enumerate(sensors):
                if found[at] is None:
                    found[at] = sensor_code_of[sensor] = len(sensor_names)
                    sensor_names.append(sensor)
        sensor_codes = cast(list[int], found)
        self._codes_by_key[0].extend([machine_code] * len(sensors))
        self._codes_by_key[1].extend(sensor_codes)
        first = len(self.machines)
        self.machines.extend([machine] * len(sensors))
        self.sensors.extend(sensors)
        ids = dict(zip(sensors, range(first, first + len(sensors)), strict=True))
        known = self._ids.get(machine)
        if known is None:
            self._ids[machine] = ids  # one step: a reader sees all of them or none
        else:
            known.update(ids)

    def ids_for(self, machine: str, sensor_names: list[str], sensor_codes: np.ndarray) -> np.ndarray:
        """Key ids of a batch's rows, from its per-batch sensor dictionary."""
        return self.ids_local(machine, sensor_names)[sensor_codes]

    def ranks(self) -> np.ndarray:
        """Each key's position in (machine, sensor) order: sorting on it sorts by the names."""
        order = sorted(range(len(self.machines)), key=lambda k: (self.machines[k], self.sensors[k]))
        ranks = np.empty(len(order), dtype=np.int64)
        ranks[order] = np.arange(len(order))
        return ranks

    def name_codes(self) -> tuple[np.ndarray, pa.Array, np.ndarray, pa.Array]:
        """For every key id given so far: its machine's code and the distinct machine names,
        its sensor's code and the distinct sensor names (codes index the names), extended by
        the keys added since the last call. Gathered by key id they make dictionary columns
        whose dictionaries hold each name once (a thousand machines and a hundred sensor
        names, not a name per key: a reader pays for a batch's dictionary). Safe beside `id_of`
        in another thread: a key's codes are appended before its id is given."""
        known = len(self.sensors)
        covered, machine_codes, machines, sensor_codes, sensors = self._name_codes
        if covered < known:
            machine_codes = np.concatenate([machine_codes, np.frombuffer(self._codes_by_key[0][covered:known], np.int32)])
            sensor_codes = np.concatenate([sensor_codes, np.frombuffer(self._codes_by_key[1][covered:known], np.int32)])
            machines = pa.array(self._distinct[0][:int(machine_codes.max()) + 1], pa.string())
            sensors = pa.array(self._distinct[1][:int(sensor_codes.max()) + 1], pa.string())
            self._name_codes = (known, machine_codes, machines, sensor_codes, sensors)
        return machine_codes, machines, sensor_codes, sensors

    def name_dictionaries(self, key_ids: np.ndarray) -> tuple[pa.DictionaryArray, pa.DictionaryArray]:
        """Machine and sensor columns for an array of key ids, dictionary-encoded: int32 codes
        into the sorted distinct names. No string per row (sealing tens of millions of rows
        spent most of its time making and hashing them), and Parquet writes the codes as
        they are. Safe beside `id_of` in another thread: ids, once given, never change."""
        cached = self._dictionaries
        if cached is None or cached[0] < len(self.sensors):
            # From the first-seen codes (name_codes): only the distinct names are sorted (a
            # thousand machines, not a million keys' names), and each key's code is re-ranked.
            machine_codes, machines, sensor_codes, sensors = self.name_codes()
            columns = []
            for codes, distinct in ((machine_codes, machines), (sensor_codes, sensors)):
                order = pc.sort_indices(distinct).to_numpy()
                rank = np.empty(len(order), dtype=np.int32)
                rank[order] = np.arange(len(order), dtype=np.int32)
                columns.append((rank[codes], distinct.take(pa.array(order))))
            cached = self._dictionaries = (len(machine_codes), columns)
        machines, sensors = (pa.DictionaryArray.from_arrays(pa.array(codes[key_ids], type=pa.int32()), names)
                             for codes, names in cached[1])
        return machines, sensors
