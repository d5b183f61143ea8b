"""Sensor keys made a machine's batch at a time (SensorKeys.ids_local) are those made one name
at a time (SensorKeys.id_of): the same ids, names, per-machine lists and name codes."""

import random

import numpy as np

from tiers.keys import SensorKeys


def _state(keys: SensorKeys) -> tuple:
    machine_codes, machines, sensor_codes, sensors = keys.name_codes()
    return (keys.machines, keys.sensors, {m: keys.of_machine(m) for m in set(keys.machines)},
            [machines[c].as_py() for c in machine_codes.tolist()], [sensors[c].as_py() for c in sensor_codes.tolist()],
            [keys.lookup(m, s) for m, s in zip(keys.machines, keys.sensors, strict=True)])


def test_a_batch_of_new_and_known_names_gets_the_ids_one_name_at_a_time_would_give():
    for seed in range(30):
        rng = random.Random(seed)
        batched, one_by_one = SensorKeys(), SensorKeys()
        for _ in range(40):
            machine = f"m{rng.randrange(6)}"
            names = [f"s{rng.randrange(12)}" for _ in range(rng.randint(1, 9))]  # repeats, old and new
            if rng.random() < 0.2:
                batched.id_of(machine, names[0])
                one_by_one.id_of(machine, names[0])
            if rng.random() < 0.3:
                batched.name_codes()  # read between additions, as SQL does
            got = batched.ids_local(machine, names).tolist()
            want = [one_by_one.id_of(machine, name) for name in names]
            assert got == want, seed
            assert [batched.machines[i] for i in got] == [machine] * len(names)
            assert [batched.sensors[i] for i in got] == names
        assert _state(batched) == _state(one_by_one), seed
        rows = batched.ids_for("m9", ["s1", "s2"], np.array([1, 1, 0], dtype=np.uint32)).tolist()
        assert rows == [batched.lookup("m9", "s2")] * 2 + [batched.lookup("m9", "s1")]
