// Rate-limit soak: a few keys driven well over their limit for a long time. The keys lt-tight-r-000 ..
// are in tier tight-r (60 requests/min, burst 60) of the config gen_config.py writes:
//   python3 loadtests/bench.d/gen_config.py tenants --keys 100 > /tmp/tenants.yaml
//   leaky-tokens proxy --config /tmp/tenants.yaml
//   k6 run -e BASE_URL=http://127.0.0.1:19184 -e KEYS=10 -e DURATION=10m loadtests/k6/ratelimit-soak.js
// Each VU owns one key and sends back to back. Expected admitted per key over the run:
// 60 (the burst) + 60 per minute. Compare the `admitted` counter (per key tag) with that; every refusal
// must be a 429 with Retry-After and the OpenAI error shape.
import http from 'k6/http';
import { check } from 'k6';
import { Counter } from 'k6/metrics';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:19184';
const KEYS = Number(__ENV.KEYS || 10);
const body = open('../payloads/chat.json');
const admitted = new Counter('admitted');
const refused = new Counter('refused');

export const options = {
  scenarios: {
    soak: {
      executor: 'constant-vus',
      vus: KEYS,
      duration: __ENV.DURATION || '10m',
    },
  },
  thresholds: {
    checks: ['rate==1'],
  },
};

export default function () {
  const k = `lt-tight-r-${String((__VU - 1) % KEYS).padStart(3, '0')}`;
  const res = http.post(`${BASE_URL}/v1/chat/completions`, body, {
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${k}` },
    tags: { key: k },
  });
  if (res.status === 200) {
    admitted.add(1, { key: k });
  } else {
    refused.add(1, { key: k });
  }
  check(res, {
    '200 or 429': (r) => r.status === 200 || r.status === 429,
    '429 has Retry-After': (r) => r.status !== 429 || Number(r.headers['Retry-After']) > 0,
    '429 is an OpenAI error': (r) => r.status !== 429 || r.json('error.code') !== undefined,
  });
}
