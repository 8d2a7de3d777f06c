"""Summarises `perf script` output (with call graphs) of the Keywarden process.

Reads the samples from standard input and prints: the kernel's share, the hottest
functions by their own samples, and Keywarden's user-space samples by stage, a stage
counting every sample with one of its functions anywhere on the stack.
"""
import collections
import sys

# (label, a substring of a function on the stack), for the user-space samples.
STAGES = [
    ("the request through axum (routing, middleware, handler)", "request_context"),
    ("  the gateway's handler", "Gateway::handle"),
    ("  forward-auth's handler", "forward_auth::forward_auth"),
    ("    the decision (Verifier::verify)", "Verifier::verify"),
    ("    recording the key's use", "Verifier::record_use"),
    ("    the upstream's request headers", "Gateway::upstream_headers"),
    ("    the identity headers", "identity_headers"),
    ("the upstream connections' tasks (hyper's client)", "Pool::connect"),
    ("hyper parsing requests", "Server as hyper::proto::h1::Http1Transaction>::parse"),
    ("hyper encoding responses", "Server as hyper::proto::h1::Http1Transaction>::encode"),
    ("SQLite (the writer's batched writes of uses and activity)", "sqlite3"),
    ("allocating", "malloc"),
    ("freeing (drop)", "drop_in_place"),
]
KERNEL_STAGES = [
    # The client's answers go out with `writev`, the upstream's requests with `send`.
    ("writing (sending, the peer's receive path, waking it)", ("do_writev", "__sys_sendto")),
    ("reading", "tcp_recvmsg"),
    ("epoll_wait", "do_epoll_wait"),
    ("switching tasks (finish_task_switch)", "finish_task_switch"),
]


def samples(lines):
    """Yields each sample's stack: its frames' function names, leaf first."""
    frames = []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if frames:
                yield frames
            frames = []
        elif line[0].isspace():
            parts = line.strip().split(" ", 1)
            name = parts[1] if len(parts) > 1 else parts[0]
            frames.append(name)
        # a line starting at column 0 is the sample's header
    if frames:
        yield frames


def main():
    subject = sys.argv[1] if len(sys.argv) > 1 else ""
    total = user = 0
    leaf = collections.Counter()
    stage = collections.Counter()
    kstage = collections.Counter()
    for frames in samples(sys.stdin):
        total += 1
        in_kernel = "[kernel.kallsyms]" in frames[0]
        name = frames[0].split("+0x")[0].split(" (")[0]
        leaf[("[k] " if in_kernel else "") + name[:110]] += 1
        if in_kernel:
            for label, marks in KERNEL_STAGES:
                marks = (marks,) if isinstance(marks, str) else marks
                if any(m in f for f in frames for m in marks):
                    kstage[label] += 1
            continue
        user += 1
        for label, mark in STAGES:
            if any(mark in f for f in frames):
                stage[label] += 1
    if total == 0:
        print("no samples: is perf allowed to record this process?")
        return
    pct = lambda n, d=total: f"{100.0 * n / d:5.1f} %"
    print(f"{total} samples of {subject}: kernel {pct(total - user)}, user space {pct(user)}")
    print("\nthe kernel's samples, by what they were doing (of all samples):")
    for label, _ in KERNEL_STAGES:
        print(f"  {pct(kstage[label])}  {label}")
    print("\nuser space by stage (of the user-space samples; stages nest and overlap):")
    for label, _ in STAGES:
        if stage[label]:
            print(f"  {pct(stage[label], user)}  {label}")
    print("\nthe hottest functions, by their own samples (of all samples):")
    for name, n in leaf.most_common(15):
        print(f"  {pct(n)}  {name}")


if __name__ == "__main__":
    main()
