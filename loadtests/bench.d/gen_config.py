"""Write the configs ./loadtests/bench generates, for running the k6 scripts against your own gateway.

  python3 loadtests/bench.d/gen_config.py tenants --keys 10000 [--tight 100] > tenants.yaml
      full chain (memory) on 127.0.0.1:19184, upstream the stub on 127.0.0.1:19101, keys lt-mt-00000 ...
      (tiers mt-basic / mt-pro / mt-ent) and lt-tight-r-000 ... / lt-tight-t-000 ... (tiers tight-r, tight-t)
  python3 loadtests/bench.d/gen_config.py keys --keys 100000 > keys.yaml
      full chain (memory) on 127.0.0.1:19186 with keys lt-k-000000 ... in the never-refusing bench tier
Add `--redis redis://127.0.0.1:6379` for `store: redis`.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("what", choices=["tenants", "keys"])
ap.add_argument("--keys", type=int, default=10000)
ap.add_argument("--tight", type=int, default=100)
ap.add_argument("--redis")
a = ap.parse_args()
store = "redis" if a.redis else "memory"
port = a.redis.rsplit(":", 1)[1] if a.redis else None
if a.what == "tenants":
    y = bench.leaky_yaml(bench.P_MT, 19194, store=store, redis_port=port, extra_tiers=bench.MT_TIERS,
                         extra_keys=bench.mt_keys(a.keys, a.tight))
else:
    y = bench.leaky_yaml(bench.P_100K, 19196, store=store, redis_port=port, extra_keys=bench.many_keys(a.keys))
if a.redis:
    y = y.replace(f'redis://127.0.0.1:{port}', a.redis)
sys.stdout.write(y)
