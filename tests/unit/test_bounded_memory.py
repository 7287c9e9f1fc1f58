"""Issue 8 item 2: a 64 KiB token (the largest accepted) with an amplifying template and
redaction of that token keeps the process small. Measured as the peak RSS of a fresh
interpreter, so nothing else of the test session counts."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import json, resource, secrets
    from datetime import UTC, datetime, timedelta
    from tokensync.oauth2 import MAX_ACCESS_TOKEN_BYTES, Token
    from tokensync.redact import redact, redact_truncate
    from tokensync.secret import SecretTooLarge, secret_data

    def peak_mib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    before = peak_mib()
    now = datetime.now(UTC)
    access_token = secrets.token_urlsafe(MAX_ACCESS_TOKEN_BYTES)[:MAX_ACCESS_TOKEN_BYTES]
    token = Token(access_token, "Bearer", now, now + timedelta(hours=1), None, "default", 200)
    template = {f"k{i}": "${access_token}" * 270 for i in range(32)}
    refused = False
    try:
        secret_data(token, template)
    except SecretTooLarge:
        refused = True
    secret_value = secrets.token_urlsafe(40)
    text = "echo " + access_token + " " + secret_value[::-1] + " " + access_token[:5000]
    cleaned = redact(text, [secret_value, access_token], client_id="client")
    short = redact_truncate(text, [secret_value, access_token], 200, client_id="client")
    leaked = access_token[:8] in cleaned + short or secret_value[-8:][::-1] in cleaned
    print(json.dumps({"before": before, "peak": peak_mib(), "refused": refused,
                      "leaked": leaked}))
    """
)


def test_token_template_and_redaction_stay_small():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=True
    )
    report = json.loads(result.stdout)
    assert report["refused"]
    assert not report["leaked"]
    # The old path: 2.2 GB for the template, ~900 MB for the redaction regex.
    assert report["peak"] - report["before"] < 48, report
