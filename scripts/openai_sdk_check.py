"""The official OpenAI Python SDK, unchanged, against the API's OpenAI drop-ins.

    openai_sdk_check.py BASE_URL API_KEY POOR_KEY [LIMITED_KEY]

BASE_URL is a running `mediactl serve` (or a deployed API); API_KEY a key with enough credits;
POOR_KEY a key whose account cannot pay for a miss (402); LIMITED_KEY, when given, a key whose
account has a daily limit it reaches with one speech miss (429). It starts nothing: see
scripts/openai_sdk_check.sh. Prints each check and ends with "N passed, N failed"; exits non-zero
when a check failed.
"""

import base64
import io
import sys
import time
import traceback
import urllib.request
import wave

import openai

PNG = b"\x89PNG\r\n\x1a\n"


def client(base_url, key):
    # No retries: a 429 or a 5xx must reach the check as the SDK raises it.
    return openai.OpenAI(base_url=base_url + "/v1", api_key=key, max_retries=0, timeout=60)


def expect_error(cls, call, status):
    """`call` raises exactly the SDK's `cls` for HTTP `status`; returns the error."""
    try:
        call()
    except openai.APIStatusError as e:
        assert type(e) is cls, f"{type(e).__name__} (status {e.status_code}), not {cls.__name__}"
        assert e.status_code == status, f"status {e.status_code}, not {status}"
        return e
    raise AssertionError(f"no error: expected {cls.__name__}")


def main(argv):
    if len(argv) not in (4, 5):
        print(__doc__, file=sys.stderr)
        return 2
    base_url, key, poor_key = argv[1].rstrip("/"), argv[2], argv[3]
    limited_key = argv[4] if len(argv) == 5 else None
    sdk = client(base_url, key)
    # Unique text and prompts: a re-run against the same server starts with misses again.
    run = f"{time.time_ns()}"
    results = []

    def check(name, fn):
        started = time.monotonic()
        try:
            detail = fn()
            results.append(True)
            print(f"ok    {name} ({time.monotonic() - started:.2f} s){': ' + detail if detail else ''}")
        except Exception as e:  # noqa: BLE001 - every failure is reported, then the next check runs
            results.append(False)
            print(f"FAIL  {name}: {e}")
            traceback.print_exc(limit=3, file=sys.stdout)

    def speech_miss_then_hit():
        text = f"Hello from the SDK check {run}"
        first = sdk.audio.speech.with_raw_response.create(model="tts-1", voice="nova", input=text)
        assert first.headers.get("x-cache") == "MISS", f"first X-Cache {first.headers.get('x-cache')}"
        audio = first.parse().read()
        assert len(audio) > 1000, f"{len(audio)} bytes"
        again = sdk.audio.speech.with_raw_response.create(model="tts-1", voice="nova", input=text)
        assert again.headers.get("x-cache") == "HIT", f"second X-Cache {again.headers.get('x-cache')}"
        assert again.parse().read() == audio, "a hit answers the same bytes"
        return f"{len(audio)} bytes of {first.headers.get('content-type')}, MISS then HIT"

    def speech_wav():
        audio = sdk.audio.speech.create(
            model="tts-1", voice="alloy", input=f"A wave file {run}", response_format="wav"
        ).read()
        with wave.open(io.BytesIO(audio)) as w:
            frames, rate = w.getnframes(), w.getframerate()
        assert frames > 0, "no frames"
        return f"{frames} frames at {rate} Hz"

    def image_url():
        answer = sdk.images.generate(prompt=f"A red kite {run}", size="256x256", response_format="url")
        url = answer.data[0].url
        assert url and answer.data[0].b64_json is None, answer
        with urllib.request.urlopen(url, timeout=30) as r:
            body = r.read()
        assert body.startswith(PNG), f"not a PNG: {body[:8]!r}"
        return f"{len(body)} bytes of PNG from the URL"

    def image_b64():
        answer = sdk.images.generate(
            prompt=f"A blue kite {run}", size="256x256", response_format="b64_json"
        )
        body = base64.b64decode(answer.data[0].b64_json)
        assert body.startswith(PNG), f"not a PNG: {body[:8]!r}"
        return f"{len(body)} bytes of PNG"

    def bad_key():
        e = expect_error(
            openai.AuthenticationError,
            lambda: client(base_url, "mc_not_a_key_at_all").audio.speech.create(
                model="tts-1", voice="nova", input="who am I"
            ),
            401,
        )
        return e.message

    def speed_out_of_range():
        e = expect_error(
            openai.UnprocessableEntityError,
            lambda: sdk.audio.speech.create(model="tts-1", voice="nova", input="too fast", speed=10),
            422,
        )
        return e.message

    def not_enough_credits():
        # The SDK has no class of its own for 402: the base class, with the status.
        e = expect_error(
            openai.APIStatusError,
            lambda: client(base_url, poor_key).audio.speech.create(
                model="tts-1", voice="nova", input=f"I cannot pay for this {run}"
            ),
            402,
        )
        return e.message

    def daily_limit():
        limited = client(base_url, limited_key)
        limited.audio.speech.create(model="tts-1", voice="nova", input=f"within the limit {run}").read()
        e = expect_error(
            openai.RateLimitError,
            lambda: limited.audio.speech.create(
                model="tts-1", voice="nova", input=f"over the limit {run}"
            ),
            429,
        )
        return e.message

    check("speech: a miss, then a hit with the same bytes (X-Cache)", speech_miss_then_hit)
    check("speech: response_format wav parses as WAV", speech_wav)
    check("images: response_format url, the URL is a PNG", image_url)
    check("images: response_format b64_json decodes to a PNG", image_b64)
    check("401 is openai.AuthenticationError", bad_key)
    check("422 is openai.UnprocessableEntityError", speed_out_of_range)
    check("402 is openai.APIStatusError with status_code 402", not_enough_credits)
    if limited_key:
        check("429 (daily limit) is openai.RateLimitError", daily_limit)
    passed = sum(results)
    failed = len(results) - passed
    print(f"openai-sdk: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
