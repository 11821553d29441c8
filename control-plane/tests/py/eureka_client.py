"""A real Eureka client (py_eureka_client) against the control plane, driven by tests/eureka_client.rs.

Usage: eureka_client.py <eureka server URL with credentials> <instance port>

Speaks JSON lines on stdout; waits for a command line on stdin between steps:
  start      -> registers, fetches the registry, prints what it discovered under LEAKY-PROXY
  heartbeat  -> sends one heartbeat, then fetches a delta with the library's decoder
  stop       -> the client's own shutdown (register DOWN, then cancel), then exits
Errors the library reports through on_error are printed, never swallowed.
"""
import asyncio
import json
import os
import sys

import py_eureka_client
import py_eureka_client.eureka_basic as eureka_basic
from py_eureka_client.eureka_client import EurekaClient

errors = []


def on_error(kind, exc):
    errors.append(f"{kind}: {exc!r}")


def emit(**fields):
    fields["errors"] = list(errors)
    print(json.dumps(fields), flush=True)


def instances(apps, name):
    app = apps.get_application(name)
    return [
        {"id": i.instanceId, "ip": i.ipAddr, "port": i.port.port, "status": i.status}
        for i in app.up_instances
    ]


async def main(server, port):
    client = EurekaClient(
        eureka_server=server,
        app_name="py-billing",
        instance_id=f"127.0.0.1:py-billing:{port}",
        instance_host="127.0.0.1",
        instance_ip="127.0.0.1",
        instance_port=port,
        # Long enough that the library's own timer never fires during the test: every request is
        # one the test asked for.
        renewal_interval_in_secs=60,
        duration_in_secs=90,
        metadata={"version": "1.2.3"},
        on_error=on_error,
    )
    for line in sys.stdin:
        command = line.strip()
        if command == "start":
            await client.start()
            emit(step="start", library=py_eureka_client.version,
                 proxies=instances(client.applications, "LEAKY-PROXY"),
                 apps=sorted(a.name for a in client.applications.applications))
        elif command == "heartbeat":
            await client.send_heartbeat()
            delta = await eureka_basic.get_delta(server)
            emit(step="heartbeat", versions_delta=delta.versionsDelta,
                 apps_hashcode=delta.appsHashcode,
                 apps=sorted(a.name for a in delta.applications))
        elif command == "stop":
            await client.stop()
            emit(step="stop")
            # Leave at once: the library's heartbeat thread must not re-register after the cancel.
            os._exit(0)


asyncio.run(main(sys.argv[1], int(sys.argv[2])))
