"""The per-request floor of the simulator's KV work with the engine's KV manager, one Azure-average
request (1,155 prompt tokens, 211 output tokens, 16-token blocks): the prompt built (random ids, as
the workload does), its keys hashed once (the router), admitted (key hint), its prompt blocks keyed,
its decode blocks grown and keyed one by one, freed. No scheduler, no events, no cost model (issue #18):

    taskset -c 1 python scripts/sim_kv_floor.py 3000
"""

import json
import os
import sys
import time

import numpy as np

from edgecloud.llm.kv_cache import KVCacheManager, LayerGroup
from edgecloud.llm.kv_cache.keys import chain_keys, root_key
from edgecloud.llm.request_state import Request
from edgecloud.llm.sampling_params import SamplingParams
from edgecloud.sim.lazy_pool import LazyBlockPool

kv = KVCacheManager([LayerGroup("full", tuple(range(32)))], 1, 16, b"sim", True)
kv.pools = [LazyBlockPool(27000)]
root = root_key(b"sim")
p = SamplingParams(temperature=0.0, max_tokens=211, ignore_eos=True)
rng = np.random.default_rng(0)
N = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
t = dict(prompt=0.0, router_keys=0.0, admit_prefill=0.0, decode_blocks=0.0, free=0.0)
for i in range(N):
    t0 = time.process_time()
    ids = rng.integers(0, 32000, 1155).tolist()
    t1 = time.process_time()
    keys = chain_keys(root, ids, 16)
    t2 = time.process_time()
    r = Request(str(i), ids, p, 0.0, i, all_token_ids=list(ids), block_tables=[[]], key_hint=(root, keys))
    r.num_computed_tokens += kv.admit(r, 8192)
    kv.register_computed(r)
    r.all_token_ids.append(0)
    t3 = time.process_time()
    c0 = r.num_computed_tokens
    for c in range(c0, c0 + 210):  # only the block boundaries (what incremental stepping touches)
        if c % 16 == 0:
            kv.grow(r, c + 1)
        elif (c + 1) % 16 == 0:
            r.num_computed_tokens = c + 1
            r.all_token_ids.extend([0] * (c + 2 - len(r.all_token_ids)))
            kv.register_computed(r)
    r.num_computed_tokens = c0 + 210
    r.all_token_ids.extend([0] * (r.num_computed_tokens + 1 - len(r.all_token_ids)))
    t4 = time.process_time()
    kv.free(r)
    t5 = time.process_time()
    for k, a, b in (
        ("prompt", t0, t1),
        ("router_keys", t1, t2),
        ("admit_prefill", t2, t3),
        ("decode_blocks", t3, t4),
        ("free", t4, t5),
    ):
        t[k] += b - a
us = {k: round(v / N * 1e6, 1) for k, v in t.items()}
us["total"] = round(sum(t.values()) / N * 1e6, 1)
print(
    json.dumps(
        {"requests": N, "us_per_request": us, "loadavg": os.getloadavg(), "affinity": sorted(os.sched_getaffinity(0))}
    )
)
