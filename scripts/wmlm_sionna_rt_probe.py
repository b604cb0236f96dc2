"""Measure Sionna RT's path solver on this CPU, to decide whether WMLM's scene generator can ray-trace.

Not part of the package: run it in a separate virtual environment that has ``sionna-rt`` (it pulls
Mitsuba, Dr.Jit and Jupyter widgets), e.g.::

    python -m venv /tmp/rt && /tmp/rt/bin/pip install sionna-rt==2.2.0 torch==2.13.0
    apt-get install libllvm19   # Dr.Jit 1.5's CPU backend fails on LLVM 15 ("Cannot select: fmaximum")
    DRJIT_LIBLLVM_PATH=/usr/lib/x86_64-linux-gnu/libLLVM.so.19.1 /tmp/rt/bin/python scripts/wmlm_sionna_rt_probe.py

It ray-traces Sionna RT's bundled street canyon (BS 1 x 32 array at 3.5 GHz, LoS + specular
reflections up to depth 3) for batches of receivers and prints seconds per receiver.
"""

from __future__ import annotations

import json
import time

import sionna.rt as rt
from sionna.rt import PathSolver, PlanarArray, Receiver, Transmitter, load_scene


def main() -> None:
    scene = load_scene(rt.scene.simple_street_canyon)
    scene.frequency = 3.5e9
    scene.tx_array = PlanarArray(num_rows=1, num_cols=32, pattern="tr38901", polarization="V")
    scene.rx_array = PlanarArray(num_rows=1, num_cols=1, pattern="iso", polarization="V")
    scene.add(Transmitter("tx", position=[-30.0, 0.0, 10.0]))
    solver = PathSolver()
    results = []
    for num_rx in (1, 10, 60):
        for name in list(scene.receivers):
            scene.remove(name)
        for i in range(num_rx):
            scene.add(Receiver(f"rx{i}", position=[-25.0 + 50.0 * i / max(num_rx, 1), 3.0, 1.5]))
        solver(scene, max_depth=3, synthetic_array=True)  # compile
        start = time.perf_counter()
        paths = solver(scene, max_depth=3, los=True, specular_reflection=True, synthetic_array=True)
        a, _tau = paths.cir(out_type="numpy")
        elapsed = time.perf_counter() - start
        results.append(
            {"receivers": num_rx, "seconds": elapsed, "s_per_receiver": elapsed / num_rx, "paths": int(a.shape[-2])}
        )
        print(json.dumps(results[-1]))
    start = time.perf_counter()
    load_scene(rt.scene.simple_street_canyon)
    print(json.dumps({"scene_reload_s": time.perf_counter() - start}))


if __name__ == "__main__":
    main()
