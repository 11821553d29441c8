// Non-streaming chat completions at a constant arrival rate: the request of ./loadtests/bench
// (loadtests/payloads/chat.json) with the bench key of loadtests/bench.d/full-memory.yaml.
//   k6 run -e BASE_URL=http://127.0.0.1:19181 -e RATE=2000 -e DURATION=60s loadtests/k6/chat.js
import http from 'k6/http';
import { check } from 'k6';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8080';
const API_KEY = __ENV.API_KEY || 'lt-bench-key';
const body = open('../payloads/chat.json');

export const options = {
  scenarios: {
    chat: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.RATE || 1000),
      timeUnit: '1s',
      duration: __ENV.DURATION || '60s',
      preAllocatedVUs: Number(__ENV.VUS || 64),
      maxVUs: Number(__ENV.MAX_VUS || 512),
    },
  },
  thresholds: {
    http_req_failed: ['rate==0'],
    http_req_duration: ['p(99)<5'],
  },
  summaryTrendStats: ['min', 'med', 'p(90)', 'p(99)', 'p(99.9)', 'max'],
};

const params = {
  headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${API_KEY}` },
};

export default function () {
  const res = http.post(`${BASE_URL}/v1/chat/completions`, body, params);
  check(res, {
    'status 200': (r) => r.status === 200,
    'has usage': (r) => r.status === 200 && r.json('usage.total_tokens') > 0,
  });
}
