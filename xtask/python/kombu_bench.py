"""Python kombu 5.7 doing `kombu bench`'s workload, for `cargo xtask bench`.

Publish N messages of B bytes to one queue with a Producer (one publish
after another), then consume and ack them all with a Consumer (prefetch 100)
and ``Connection.drain_events``, then time single round trips (publish one
message, wait until the consumer has it; the ack is not timed) on a second
queue with prefetch 1. Prints ONE JSON line with the keys of
``kombu bench --json``.

Run it with the pinned venv of ``cargo xtask python``::

    .services/pykombu/bin/python xtask/python/kombu_bench.py \
        --url redis://127.0.0.1:6379/0 --messages 20000 --size 100 --rtt-samples 500
"""

import argparse
import json
import math
import os
import resource
import signal
import sys
import time
from urllib.parse import urlsplit, urlunsplit

import kombu
from kombu import Connection, Consumer, Producer, Queue

WARM_UP = 10  # untimed round trips first, as kombu bench does
TIMEOUT = 30.0  # seconds without progress before giving up, as kombu bench


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="memory://")
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--prefetch", type=int, default=100)
    parser.add_argument("--rtt-samples", type=int, default=500)
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="K=V",
        help="a transport option; V is parsed as JSON when it can be",
    )
    parser.add_argument("--json", action="store_true", help="accepted; the output is always JSON")
    return parser.parse_args()


def transport_options(pairs):
    options = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


def display_url(url):
    """The URL without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc="%s:***@%s" % (user, netloc[-1])))


def percentile_us(sorted_secs, p):
    """Nearest-rank percentile in microseconds (as kombu bench computes it)."""
    if not sorted_secs:
        return None
    rank = math.ceil(p / 100.0 * len(sorted_secs))
    index = min(max(rank, 1), len(sorted_secs)) - 1
    return round(sorted_secs[index] * 1e7) / 10.0


def per_sec(count, secs):
    return round(count / secs * 10.0) / 10.0 if secs > 0 else 0.0


def drain_until(conn, done, progress, what):
    """drain_events until done() is true; fail after TIMEOUT s without progress()."""
    last_progress, last_time = progress(), time.monotonic()
    while not done():
        try:
            conn.drain_events(timeout=1.0)
        except TimeoutError:
            pass
        except OSError as exc:  # socket.timeout is an OSError on 3.10+
            if "timed out" not in str(exc):
                raise
        now = progress()
        if now != last_progress:
            last_progress, last_time = now, time.monotonic()
        elif time.monotonic() - last_time > TIMEOUT:
            raise RuntimeError("%s stalled: no message for %.0f s" % (what, TIMEOUT))


def main():
    # A SIGTERM (e.g. Ctrl-C on the xtask) still deletes the queues.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args = parse_args()
    options = transport_options(args.option)
    body = b"x" * args.size
    stamp = "%x-%x" % (os.getpid(), time.time_ns() & 0xFFFFFFFFFFFF)
    queue = Queue("pykombu-bench-" + stamp, routing_key="pykombu-bench-" + stamp)
    rtt_queue = Queue("pykombu-bench-" + stamp + "-rtt", routing_key="pykombu-bench-" + stamp + "-rtt")
    publish_kwargs = dict(content_type="application/data", content_encoding="binary")

    conn = Connection(args.url, transport_options=options)
    conn.connect()
    transport_name = conn.transport_cls if isinstance(conn.transport_cls, str) else "custom"
    admin = conn.channel()
    try:
        queue(admin).declare()
        rtt_queue(admin).declare()

        # Publish: one Producer, one publish after another.
        producer = Producer(conn.channel())
        started = time.perf_counter()
        for _ in range(args.messages):
            producer.publish(body, routing_key=queue.name, **publish_kwargs)
        publish_secs = time.perf_counter() - started

        # Consume + ack: one Consumer, prefetch 100, ack each message.
        consumed = [0]

        def on_message(_body, message):
            message.ack()
            consumed[0] += 1

        consumer = Consumer(
            conn.channel(),
            [queue],
            callbacks=[on_message],
            prefetch_count=args.prefetch or None,
            accept=["application/data"],
        )
        started = time.perf_counter()
        with consumer:
            drain_until(
                conn, lambda: consumed[0] >= args.messages, lambda: consumed[0], "consume"
            )
        consume_secs = time.perf_counter() - started

        # Round trips: publish one, time until the consumer has it.
        samples = []
        if args.rtt_samples > 0:
            got = []

            def on_trip(_body, message):
                got.append((time.perf_counter(), message))

            trip_consumer = Consumer(
                conn.channel(),
                [rtt_queue],
                callbacks=[on_trip],
                prefetch_count=1,
                accept=["application/data"],
            )
            trip_producer = Producer(conn.channel())
            with trip_consumer:
                for trip in range(WARM_UP + args.rtt_samples):
                    del got[:]
                    started = time.perf_counter()
                    trip_producer.publish(body, routing_key=rtt_queue.name, **publish_kwargs)
                    drain_until(conn, lambda: bool(got), lambda: len(got), "round trip")
                    arrived, message = got[0]
                    message.ack()
                    if trip >= WARM_UP:
                        samples.append(arrived - started)
            samples.sort()
    finally:
        for q in (queue, rtt_queue):
            try:
                q(admin).delete()
            except Exception:  # cleanup only: the numbers are what matter
                pass
        conn.release()

    print(
        json.dumps(
            {
                "url": display_url(args.url),
                "transport": "python-kombu-" + transport_name,
                "messages": args.messages,
                "size": args.size,
                "producers": 1,
                "consumers": 1,
                "prefetch": args.prefetch,
                "publish_secs": publish_secs,
                "publish_per_sec": per_sec(args.messages, publish_secs),
                "consume_secs": consume_secs,
                "consume_per_sec": per_sec(args.messages, consume_secs),
                "rtt_samples": len(samples),
                "rtt_p50_us": percentile_us(samples, 50.0),
                "rtt_p99_us": percentile_us(samples, 99.0),
                "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "kombu_version": kombu.__version__,
                "python_version": sys.version.split()[0],
            }
        )
    )


if __name__ == "__main__":
    main()
