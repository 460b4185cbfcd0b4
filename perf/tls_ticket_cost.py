"""CPU cost of rproxyd's ticket-key callbacks (C and ctypes), per handshake, against OpenSSL's own keys.

    python perf/tls_ticket_cost.py CERT KEY [COUNT]

Client and server run in this process over memory BIOs (no sockets), pinned wherever the
caller pins it; each figure is the best of three runs of COUNT handshakes, in CPU time.
"""

from __future__ import annotations

import contextlib
import ssl
import sys
import time

from appliance.tls import libssl
from appliance.tls.ring import TicketRing, private_region, random_key
from appliance.tls.tickets import TicketKeyCallback


def server_context(cert: str, key: str, version: ssl.TLSVersion, callback: str) -> ssl.SSLContext:
    """A server context with OpenSSL's own ticket keys ("openssl") or rproxyd's "C" or "ctypes" callback."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.minimum_version = ctx.maximum_version = version
    ctx.num_tickets = 1
    if callback != "openssl":
        region = private_region()
        TicketRing(region).write([random_key()], 0.0)
        tickets = TicketKeyCallback(TicketRing(region), ["v"], "v", native=callback == "C")
        tickets.install(libssl.ctx_pointer(ctx))
        ctx.keep_alive = tickets  # type: ignore[attr-defined] - the thunk must outlive the context
    return ctx


def handshake(server: ssl.SSLContext, client: ssl.SSLContext,
              session: ssl.SSLSession | None) -> ssl.SSLObject:
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname="x", session=session)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for end in (c, s):
            with contextlib.suppress(ssl.SSLWantReadError):
                end.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    s.write(b"x")  # flushes TLS 1.3 tickets to the client
    c_in.write(s_out.read())
    c.read(1)
    return c


def main() -> None:
    cert, key = sys.argv[1], sys.argv[2]
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 1500
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        for resumed in (False, True):
            cost = {}
            for callback in ("openssl", "C", "ctypes"):
                server = server_context(cert, key, version, callback)
                client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                client.check_hostname = False
                client.verify_mode = ssl.CERT_NONE
                session = handshake(server, client, None).session
                best = float("inf")
                for _ in range(3):
                    start = time.process_time()
                    for _ in range(count):
                        conn = handshake(server, client, session if resumed else None)
                        if resumed:
                            assert conn.session_reused
                            session = conn.session
                    best = min(best, (time.process_time() - start) / count)
                cost[callback] = best * 1e6
            kind = "resumed" if resumed else "full"
            print(f"{version.name} {kind}: OpenSSL keys {cost['openssl']:.0f} us, "
                  f"C callback {cost['C'] - cost['openssl']:+.1f} us, "
                  f"ctypes callback {cost['ctypes'] - cost['openssl']:+.1f} us")


if __name__ == "__main__":
    main()
