#!/usr/bin/env python3
"""Writes the tree `keywarden scan` is timed on (BENCHMARKS.md): 10 000 source-like files
in 100 directories, 5 of them holding a real key of the default template and 50 holding a
look-alike whose checksum fails. Usage: bench/scan_tree.py DIR"""
import os, random, string, sys, zlib

B62 = string.digits + string.ascii_uppercase + string.ascii_lowercase

def checksum(body):
    v = zlib.crc32(body.encode())
    out = []
    for _ in range(6):
        out.append(B62[v % 62])
        v //= 62
    return "".join(reversed(out))

def key(rng, mode="live", kind="sk"):
    body = f"kw_{kind}_{mode}_" + "".join(rng.choice(B62) for _ in range(32))
    return body + checksum(body)

def main(root):
    rng = random.Random(20261203)
    for n in range(10_000):
        d = os.path.join(root, f"pkg{n // 100:02d}")
        os.makedirs(d, exist_ok=True)
        lines = [f'let value_{i} = "{rng.getrandbits(160):040x}"; // config entry {n}'
                 for i in range(5 + n % 20)]
        if n % 2000 == 1000:
            lines.append(f'const API_KEY: &str = "{key(rng)}";')
        elif n % 200 == 7:
            k = key(rng, kind="pk")
            lines.append("// example: " + k[:-1] + ("x" if k[-1] != "x" else "y"))
        with open(os.path.join(d, f"file{n:05d}.rs"), "w") as f:
            f.write("\n".join(lines) + "\n")

if __name__ == "__main__":
    main(sys.argv[1])
