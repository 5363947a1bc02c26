"""Email sending: a kept-open SMTP connection per process against a new one per message,
and the achieved rate against the configured provider limit.

    .venv/bin/python bench/email_delivery.py [--messages N] [--processes P]

The local mail sink (`python -m conveyor.local.mail_sink`, aiosmtpd) runs as its own
process. P sender processes each send N/P messages built by the workload's own
`build_message`:

  1. reuse: one `SmtpConnection` per process (the worker's path: connect once, NOOP when
     idle, MAIL, RCPT and DATA pipelined in one write per message, as the sink offers
     PIPELINING)
  2. naive: `smtplib.SMTP(host, port)` + `sendmail` + `quit` per message (login too when
     the server offers AUTH; the sink does not)

Then the provider limit: the same P processes send through `Pacer` (GCRA in Redis, shared
by the processes) at 50/s and 500/s; achieved = (messages - 1) / (last send - first send).
Needs Redis (CONVEYOR_REDIS_URL, default redis://127.0.0.1:6379/11; the rate keys used
are deleted first).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import smtplib
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from _common import free_port, tail
from _latency import serve_delayed
from conveyor.workloads.email.addresses import Address
from conveyor.workloads.email.message import Draft, build_message

HOST = "127.0.0.1"


def message(index: int) -> tuple[str, list[str], bytes]:
    draft = Draft(
        sender=Address("bench@example.com", "Bench"),
        to=[Address(f"r{index}@d{index % 4}.example.com")],
        cc=[],
        subject=f"Benchmark message {index}",
        text="Hello,\n\nThis is a benchmark message.\n" * 10,
        html="<p>Hello,</p><p>This is a benchmark message.</p>" * 10,
        message_id=f"<bench-{index}@example.com>",
    )
    return "bench@example.com", [draft.to[0].email], build_message(draft).as_bytes()


def send_reuse(port: int, indexes: list[int], tls: bool = False) -> list[float]:
    from conveyor.workloads.email.smtp import SmtpConfig, SmtpConnection

    config = SmtpConfig(HOST, port, starttls=tls, username="bench" if tls else None)
    connection = SmtpConnection(config if tls else SmtpConfig(HOST, port))
    stamps = []
    for index in indexes:
        sender, recipients, data = message(index)
        connection.send(sender, recipients, data)
        stamps.append(time.time())
    connection.close()
    return stamps


def send_naive(port: int, indexes: list[int], tls: bool = False) -> list[float]:
    import ssl

    stamps = []
    for index in indexes:
        sender, recipients, data = message(index)
        smtp = smtplib.SMTP(HOST, port)
        if tls:
            smtp.starttls(context=ssl.create_default_context())
            smtp.ehlo()
        if smtp.has_extn("auth"):
            smtp.login("bench", "bench")
        smtp.sendmail(sender, recipients, data)
        smtp.quit()
        stamps.append(time.time())
    return stamps


def send_paced(port: int, indexes: list[int], rate: float, redis_url: str) -> list[float]:
    os.environ["CONVEYOR_REDIS_URL"] = redis_url
    from conveyor.workloads.email.limits import EmailLimits, Pacer
    from conveyor.workloads.email.smtp import SmtpConfig, SmtpConnection

    connection = SmtpConnection(SmtpConfig(HOST, port))
    pacer = Pacer(EmailLimits(provider=rate))
    stamps = []
    for index in indexes:
        sender, recipients, data = message(index)
        while True:
            slot = pacer.take("bench", {}, 1)
            if slot.allowed or slot.reserved:
                time.sleep(slot.retry_after)
                break
            time.sleep(slot.retry_after)
        connection.send(sender, recipients, data)
        stamps.append(time.time())
    connection.close()
    return stamps


def serve_tls(port: int, cert: str, key: str, ready: Any) -> None:
    """An aiosmtpd server requiring STARTTLS and AUTH, like a provider's port 587."""
    import logging
    import ssl

    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    from conveyor.local.mail_sink import SinkHandler

    # aiosmtpd logs a warning about its own legacy attribute on every login.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    def authenticate(*args: Any) -> AuthResult:
        return AuthResult(success=True)

    controller = Controller(
        SinkHandler(), hostname=HOST, port=port, tls_context=context, require_starttls=True,
        authenticator=authenticate, auth_require_tls=True,
    )  # fmt: skip
    controller.start()
    ready.set()
    time.sleep(3600)


def run(mode: str, port: int, total: int, processes: int, *extra: object) -> list[float]:
    shares = [list(range(worker, total, processes)) for worker in range(processes)]
    target = {"reuse": send_reuse, "naive": send_naive, "paced": send_paced}[mode]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        results = pool.starmap(target, [(port, share, *extra) for share in shares])
    return sorted(stamp for stamps in results for stamp in stamps)


def rate_of(stamps: list[float]) -> float:
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    redis_url = os.environ.get("CONVEYOR_REDIS_URL", "redis://127.0.0.1:6379/11")
    workdir = Path(tempfile.mkdtemp(prefix="bench-email-"))
    port = free_port()
    log = workdir / "sink.log"
    sink = subprocess.Popen(
        [sys.executable, "-m", "conveyor.local.mail_sink", "--host", HOST, "--port", str(port),
         "--dir", str(workdir / "mailbox"), "--max-messages", "100000"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=workdir,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                smtplib.SMTP(HOST, port, timeout=1).quit()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"the mail sink did not start:\n{tail(log)}") from None
                time.sleep(0.2)
        print(f"{args.messages} messages, {args.processes} sender processes, sink on :{port}")
        reuse = rate_of(run("reuse", port, args.messages, args.processes))
        naive = rate_of(run("naive", port, args.messages, args.processes))
        print(f"  plain SMTP, kept-open connection  : {reuse:8.1f} msg/s")
        print(f"  plain SMTP, connection per message: {naive:8.1f} msg/s")
        print(f"  ratio                              : {reuse / naive:8.2f}x")
        tls_port = free_port()
        cert, key = str(workdir / "cert.pem"), str(workdir / "key.pem")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
             "-keyout", key, "-out", cert],
            check=True, capture_output=True,
        )  # fmt: skip
        os.environ["SSL_CERT_FILE"] = cert  # the senders trust the test certificate
        spawn = multiprocessing.get_context("spawn")
        ready = spawn.Event()
        server = spawn.Process(target=serve_tls, args=(tls_port, cert, key, ready), daemon=True)
        server.start()
        ready.wait(15)
        tls_count = max(200, args.messages // 4)
        reuse_tls = rate_of(run("reuse", tls_port, tls_count, args.processes, True))
        naive_tls = rate_of(run("naive", tls_port, tls_count, args.processes, True))
        print(
            f"  STARTTLS + AUTH, kept-open        : {reuse_tls:8.1f} msg/s ({tls_count} messages)"
        )
        print(f"  STARTTLS + AUTH, per message      : {naive_tls:8.1f} msg/s")
        print(f"  ratio                             : {reuse_tls / naive_tls:8.2f}x")
        # The same server behind a link with a real round-trip time, as a provider is.
        for rtt_ms in (2, 10):
            relay_port = free_port()
            relay_ready = spawn.Event()
            relay = spawn.Process(
                target=serve_delayed,
                args=(tls_port, relay_port, rtt_ms / 1000, relay_ready),
                daemon=True,
            )
            relay.start()
            relay_ready.wait(15)
            count = 400 if rtt_ms <= 2 else 160
            reuse_far = rate_of(run("reuse", relay_port, count, args.processes, True))
            naive_far = rate_of(run("naive", relay_port, count, args.processes, True))
            relay.terminate()
            print(
                f"  STARTTLS + AUTH, {rtt_ms:>2} ms round trip: kept-open {reuse_far:6.1f} msg/s, "
                f"per message {naive_far:6.1f} msg/s, ratio {reuse_far / naive_far:5.2f}x "
                f"({count} messages)"
            )
        server.terminate()
        client = redis.Redis.from_url(redis_url)
        for configured in (50, 500):
            client.delete("conveyor:rate:email:provider", "conveyor:rate:email:owner:bench")
            count = configured * 4  # about four seconds' worth
            stamps = run("paced", port, count, args.processes, float(configured), redis_url)
            achieved = rate_of(stamps)
            print(
                f"  provider limit {configured:>4}/s: achieved {achieved:7.1f}/s "
                f"({achieved / configured:.3f}) over {count} messages"
            )
    finally:
        sink.terminate()
        sink.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
