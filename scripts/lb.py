#!/usr/bin/env python3
"""The local stack's entry point: a round-robin TCP proxy in front of the edges.

It sends each new connection to the next edge whose /readyz answers 200, so a draining
edge (readiness failed) gets no new clients: the same contract a Kubernetes Service gives.
Readiness is read on the edge's operations port (its --ops-listen): the public port does
not serve /readyz. Development use only; in Kubernetes the Service/Ingress does this.

usage: lb.py LISTEN_PORT BACKEND_PORT[:OPS_PORT] [BACKEND_PORT[:OPS_PORT] ...]
(without :OPS_PORT, readiness is read on BACKEND_PORT itself)
"""
import asyncio
import itertools
import sys
import urllib.request

HOST = "127.0.0.1"


class Backends:
    def __init__(self, specs):
        # "8081:9081" -> public port 8081, readiness on 9081; "8081" -> both on 8081.
        self.ops = {}
        for spec in specs:
            public, _, ops = spec.partition(":")
            self.ops[int(public)] = int(ops or public)
        self.ports = list(self.ops)
        self.ready = {p: False for p in self.ports}
        self.cycle = itertools.cycle(self.ports)

    async def watch(self):
        loop = asyncio.get_running_loop()
        while True:
            for p in self.ports:
                self.ready[p] = await loop.run_in_executor(None, self.check, self.ops[p])
            await asyncio.sleep(0.5)

    @staticmethod
    def check(ops_port):
        try:
            with urllib.request.urlopen(f"http://{HOST}:{ops_port}/readyz", timeout=1) as r:
                return r.status == 200
        except Exception:
            return False

    def pick(self):
        for _ in range(len(self.ports)):
            p = next(self.cycle)
            if self.ready[p]:
                return p
        return None


async def pipe(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def main():
    listen = int(sys.argv[1])
    backends = Backends(sys.argv[2:])
    asyncio.create_task(backends.watch())

    async def handle(cr, cw):
        port = backends.pick()
        if port is None:
            cw.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await cw.drain()
            cw.close()
            return
        try:
            br, bw = await asyncio.open_connection(HOST, port)
        except OSError:
            cw.close()
            return
        await asyncio.gather(pipe(cr, bw), pipe(br, cw))

    server = await asyncio.start_server(handle, HOST, listen)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
