// Streaming chat completions (SSE), many at once: loadtests/payloads/chat-stream.json
// (max_tokens 64, include_usage). k6's http module buffers the whole response, so this measures time to
// the full stream and checks it ended with the usage chunk and [DONE]; per-chunk gaps need a streaming
// client (./loadtests/bench uses loadtests/bench.d/clients.py sse).
// Run against a stub with realistic pacing (`leaky-tokens stubs --latency realistic`) behind the gateway:
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e STREAMS=1000 -e DURATION=2m loadtests/k6/stream.js
import http from 'k6/http';
import { check } from 'k6';
import { Trend } from 'k6/metrics';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8080';
const API_KEY = __ENV.API_KEY || 'lt-bench-key';
const body = open('../payloads/chat-stream.json');
const streamDuration = new Trend('stream_duration', true);

export const options = {
  scenarios: {
    streams: {
      executor: 'constant-vus',
      vus: Number(__ENV.STREAMS || 1000),
      duration: __ENV.DURATION || '2m',
    },
  },
  thresholds: {
    http_req_failed: ['rate==0'],
    checks: ['rate==1'],
  },
};

const params = {
  headers: {
    'Content-Type': 'application/json',
    Accept: 'text/event-stream',
    Authorization: `Bearer ${API_KEY}`,
  },
  timeout: '120s',
};

export default function () {
  const res = http.post(`${BASE_URL}/v1/chat/completions`, body, params);
  streamDuration.add(res.timings.duration);
  check(res, {
    'status 200': (r) => r.status === 200,
    'event stream': (r) => String(r.headers['Content-Type'] || '').startsWith('text/event-stream'),
    'usage chunk': (r) => r.body.includes('"usage":{'),
    'ends with [DONE]': (r) => r.body.trimEnd().endsWith('data: [DONE]'),
  });
}
