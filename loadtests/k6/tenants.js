// Mixed tenants: every request uses a random key of lt-mt-00000 .. lt-mt-<KEYS-1>, the keys of the
// multi-tenant config ./loadtests/bench generates (70% tier mt-basic, 20% mt-pro, 10% mt-ent). Write that
// config for your own gateway with:
//   python3 loadtests/bench.d/gen_config.py tenants --keys 10000 > /tmp/tenants.yaml
//   leaky-tokens proxy --config /tmp/tenants.yaml     # listens on 127.0.0.1:19184
//   k6 run -e BASE_URL=http://127.0.0.1:19184 -e KEYS=10000 -e RATE=2000 loadtests/k6/tenants.js
// Every key's limits are above what this load sends it, so anything but 200 fails the run.
import http from 'k6/http';
import { check } from 'k6';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:19184';
const KEYS = Number(__ENV.KEYS || 10000);
const body = open('../payloads/chat.json');

export const options = {
  scenarios: {
    tenants: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.RATE || 1000),
      timeUnit: '1s',
      duration: __ENV.DURATION || '60s',
      preAllocatedVUs: 64,
      maxVUs: 512,
    },
  },
  thresholds: { http_req_failed: ['rate==0'] },
};

function key(i) {
  return `lt-mt-${String(i).padStart(5, '0')}`;
}

export default function () {
  const k = key(Math.floor(Math.random() * KEYS));
  const res = http.post(`${BASE_URL}/v1/chat/completions`, body, {
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${k}` },
    tags: { tier: 'mixed' },
  });
  check(res, { 'status 200': (r) => r.status === 200 });
}
