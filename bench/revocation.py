#!/usr/bin/env python3
"""How long a revocation takes to be seen by another instance.

Two Keywarden instances share one PostgreSQL database. For each of N keys: the key is
verified on instance B until B answers 200 (so B has it cached), revoked on instance A,
and from the moment A answers the revoke with 200, B is asked again and again (forward-auth,
on one keep-alive connection) until it refuses the key. The time from A's 200 to B's
first refusal is one sample.

    bench/revocation.py ADMIN_A ADMIN_B ROOT_KEY [N]

ADMIN_A and ADMIN_B are `host:port` of the two admin listeners. Prints
`BENCH revocation_visible_ms_p50|_p99|_max <ms> ms` and the number of samples.
"""
import http.client
import json
import sys
import time

GIVE_UP_S = 30.0


def conn(addr):
    host, port = addr.rsplit(":", 1)
    return http.client.HTTPConnection(host, int(port), timeout=10)


def call(c, method, path, body=None, headers=None):
    h = dict(headers or {})
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    c.request(method, path, body=data, headers=h)
    r = c.getresponse()
    return r.status, r.read()


def main():
    a_addr, b_addr, root = sys.argv[1], sys.argv[2], sys.argv[3]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 60
    a, b = conn(a_addr), conn(b_addr)
    admin = {"Authorization": f"Bearer {root}"}
    st, body = call(a, "POST", "/v1/admin/accounts", {"name": "revocation"}, admin)
    assert st == 200 or st == 201, (st, body)
    acc = json.loads(body)["id"]
    keys = []
    for _ in range(n):
        st, body = call(a, "POST", f"/v1/admin/accounts/{acc}/keys",
                        {"mode": "live", "name": "rev"}, admin)
        assert st in (200, 201), (st, body)
        k = json.loads(body)
        keys.append((k["id"], k["api_key"]))

    def verify_on_b(key):
        return call(b, "GET", "/v1/forward-auth", None, {
            "Authorization": f"Bearer {key}",
            "X-Original-URI": "/v1/things",
            "X-Original-Method": "GET",
        })[0]

    samples = []
    polls = 0
    for kid, key in keys:
        # B knows the key (and caches it) before it is revoked.
        deadline = time.monotonic() + GIVE_UP_S
        while verify_on_b(key) != 200:
            if time.monotonic() > deadline:
                sys.exit(f"instance B never accepted key {kid}")
            time.sleep(0.01)
        st, body = call(a, "POST", f"/v1/admin/keys/{kid}/revoke", {"reason": "bench"}, admin)
        t0 = time.monotonic()
        assert st == 200, (st, body)
        while True:
            polls += 1
            st = verify_on_b(key)
            if st != 200:
                break
            if time.monotonic() - t0 > GIVE_UP_S:
                sys.exit(f"instance B still accepted revoked key {kid} after {GIVE_UP_S} s")
        samples.append((time.monotonic() - t0) * 1000.0)

    samples.sort()

    def pct(p):
        # Nearest rank.
        i = max(0, min(len(samples) - 1, int(round(p / 100.0 * len(samples) + 0.5)) - 1))
        return samples[i]

    print(f"revocations: {len(samples)}, polls of instance B: {polls}", file=sys.stderr)
    print(f"BENCH revocation_visible_ms_p50 {pct(50):.2f} ms")
    print(f"BENCH revocation_visible_ms_p99 {pct(99):.2f} ms")
    print(f"BENCH revocation_visible_ms_max {samples[-1]:.2f} ms")


if __name__ == "__main__":
    main()
