"""The AWS emulator for the tests: moto's server, made strict about DynamoDB transactions.

One request's work on the backends at a time. moto's backends are not thread-safe (a
TransactWriteItems copies a table while another thread writes to it, and conditional writes can
interleave), while DynamoDB's conditional writes are atomic. Connections are still served by
threads; only the work on the backends is serialised, so the emulator keeps DynamoDB's guarantees
under concurrent clients.

Transaction conflicts. Serialising everything makes moto kinder than DynamoDB: DynamoDB cancels a
transaction that touches an item another transaction is still working on, and refuses a plain write
to such an item, where moto would simply run one after the other. Code that is only ever tested
against moto never sees those errors, so this emulator models them:

- A TransactWriteItems is "in flight" for a hold time (STRICT_HOLD_MS at start, default 15 ms;
  /_strict/config changes it): its items' keys (table, hash and range key, from the table's key
  schema in moto, PK/SK when the table is unknown) are held for that time while the serialisation
  lock is let go, then released (also on error), and moto runs the transaction under the lock,
  conditions checked then. A busy emulator never stretches a hold past its configured time.
- A TransactWriteItems touching a held key is cancelled at once: HTTP 400,
  TransactionCanceledException, one reason per item in order, {"Code": "TransactionConflict",
  "Message": "Transaction is ongoing for the item"} for the held ones and {"Code": "None"} for the
  others.
- A PutItem, UpdateItem or DeleteItem on a held key fails at once: HTTP 400,
  TransactionConflictException, "Transaction is ongoing for the item".
- Reads (GetItem, BatchGetItem, Query, Scan, TransactGetItems) and BatchWriteItem are not affected.

Error bodies follow DynamoDB's JSON protocol (and moto's own): "__type" is
"com.amazonaws.dynamodb.v20120810#<Name>", the text is in "message" (TransactionCanceledException
also carries it as "Message", its modelled member, next to "CancellationReasons"), and the
X-Amzn-ErrorType header holds <Name>.

Injected faults, targeted so that concurrent tests do not disturb each other: a rule fails the next
`times` DynamoDB requests of `operation` (an operation name such as "PutItem", or "*") that touch a
key whose hash or range key value contains `key_contains` (absent or "": any request; the items of
PutItem, UpdateItem, DeleteItem, GetItem, the transactions and the batches count, and the
ExpressionAttributeValues of a Query). `error` is one of ThrottlingException,
ProvisionedThroughputExceededException (HTTP 400), InternalServerError (HTTP 500) or
TransactionConflict (a TransactionCanceledException whose matching items have the reason
TransactionConflict for TransactWriteItems and TransactGetItems, a TransactionConflictException for
any other operation). The SDKs retry throttling and 500 errors by themselves, so a rule has to
outlast their attempts to be seen by the caller.

Control endpoints (never passed to moto; JSON in and out):

    POST   /_strict/faults       {"operation", "key_contains", "error", "times"} adds a rule
    GET    /_strict/faults       the rules still armed
    DELETE /_strict/faults       removes every rule (?key_contains=X: only the rules for X)
    POST   /_strict/slow         {"key_contains", "hold_ms"}: transactions touching a key that
                                 contains it are held that long (a deterministic overlap)
    DELETE /_strict/slow         ?key_contains=X removes that one, without: all
    POST   /_strict/config       {"hold_ms": N} sets the hold time; GET shows it
    GET    /_strict/stats        {"transactions", "transaction_conflicts", "write_conflicts",
                                  "faults_injected"}: TransactWriteItems received, those cancelled
                                  by a held key, plain writes refused by a held key, requests
                                  failed by a rule
    POST   /_strict/stats/reset  zeroes the counters

    moto_server.py PORT
"""

import io
import json
import os
import re
import sys
import threading
import time
import uuid

from werkzeug.serving import run_simple

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)

TARGET_PREFIX = "DynamoDB_20120810."
ERROR_PREFIX = "com.amazonaws.dynamodb.v20120810#"
CONFLICT_MESSAGE = "Transaction is ongoing for the item"
PLAIN_WRITES = {"PutItem", "UpdateItem", "DeleteItem"}
FAULTS = {
    "ThrottlingException": (400, "Rate of requests exceeds the allowed throughput."),
    "ProvisionedThroughputExceededException": (
        400,
        "The level of configured provisioned throughput for the table was exceeded. "
        "Consider increasing your provisioning level with the UpdateTable API.",
    ),
    "InternalServerError": (500, "Internal server error"),
    "TransactionConflict": (400, CONFLICT_MESSAGE),
}
STATUS = {
    200: "200 OK",
    400: "400 Bad Request",
    404: "404 Not Found",
    500: "500 Internal Server Error",
}
COUNTERS = ("transactions", "transaction_conflicts", "write_conflicts", "faults_injected")
ACCESS_KEY = re.compile(r"AWS.*(?P<access_key>(?<![A-Z0-9])[A-Z0-9]{20}(?![A-Z0-9]))[:/]")


def json_response(start_response, status, document, headers=()):
    body = json.dumps(document).encode()
    start_response(
        STATUS[status],
        [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *headers],
    )
    return [body]


def dynamodb_error(start_response, status, name, message, **extra):
    document = {"__type": ERROR_PREFIX + name, "message": message, **extra}
    headers = [("X-Amzn-ErrorType", name), ("x-amzn-RequestId", str(uuid.uuid4()))]
    return json_response(start_response, status, document, headers)


def transaction_cancelled(start_response, conflicting, count):
    codes = ["TransactionConflict" if i in conflicting else "None" for i in range(count)]
    message = (
        "Transaction cancelled, please refer cancellation reasons for specific reasons "
        f"[{', '.join(codes)}]"
    )
    reasons = [
        {"Code": code, "Message": CONFLICT_MESSAGE} if code != "None" else {"Code": "None"}
        for code in codes
    ]
    return dynamodb_error(
        start_response,
        400,
        "TransactionCanceledException",
        message,
        CancellationReasons=reasons,
        Message=message,
    )


def query_value(environ, name):
    """One query parameter of the request, or None."""
    from urllib.parse import parse_qs

    values = parse_qs(environ.get("QUERY_STRING", "")).get(name)
    return values[0] if values else None


def scalar_values(key):
    """The key's attribute values as one string, for `key_contains`."""
    return " ".join(str(scalar(v)) for v in (key or {}).values())


def read_body(environ):
    """Reads the request body once and gives the application a fresh copy of it."""
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    if length:
        body = stream.read(int(length))
    elif environ.get("wsgi.input_terminated"):
        body = stream.read()
    else:
        body = b""
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    return body


def scalar(value):
    """The text of a typed attribute value ({"S": "x"} is "x"), for `key_contains`."""
    if isinstance(value, dict) and len(value) == 1:
        (inner,) = value.values()
        if isinstance(inner, str):
            return inner
    return json.dumps(value, sort_keys=True)


def touched(operation, request):
    """(table, attributes, is_full_item) of every item a DynamoDB request names, in order."""
    items = []
    if operation == "PutItem":
        items.append((request.get("TableName"), request.get("Item") or {}, True))
    elif operation in ("UpdateItem", "DeleteItem", "GetItem"):
        items.append((request.get("TableName"), request.get("Key") or {}, False))
    elif operation in ("TransactWriteItems", "TransactGetItems"):
        for entry in request.get("TransactItems") or []:
            for kind, action in (entry or {}).items():
                if isinstance(action, dict):
                    full = kind == "Put"
                    attributes = action.get("Item" if full else "Key") or {}
                    items.append((action.get("TableName"), attributes, full))
    elif operation == "BatchGetItem":
        for table, wanted in (request.get("RequestItems") or {}).items():
            for key in (wanted or {}).get("Keys") or []:
                items.append((table, key or {}, False))
    elif operation == "BatchWriteItem":
        for table, writes in (request.get("RequestItems") or {}).items():
            for write in writes or []:
                if "PutRequest" in write:
                    items.append((table, write["PutRequest"].get("Item") or {}, True))
                elif "DeleteRequest" in write:
                    items.append((table, write["DeleteRequest"].get("Key") or {}, False))
    elif operation == "Query":
        values = dict(request.get("ExpressionAttributeValues") or {})
        for name, condition in (request.get("KeyConditions") or {}).items():
            for i, value in enumerate((condition or {}).get("AttributeValueList") or []):
                values[f"{name}{i}"] = value
        items.append((request.get("TableName"), values, False))
    return items


def key_names(account, region, table):
    """The key attribute names of a table, from moto's backend (PK and SK when it is unknown)."""
    try:
        from moto.dynamodb.models import dynamodb_backends

        found = dynamodb_backends[account][region].get_table(table)
        return [a for a in (found.hash_key_attr, found.range_key_attr) if a]
    except Exception:
        return ["PK", "SK"]


def identity(account, region, table, key):
    """What makes two requests touch the same item: None when the request names no key."""
    if not key:
        return None
    if isinstance(table, str) and table.startswith("arn:") and ":table/" in table:
        table = table.split(":table/", 1)[1]
    values = sorted((a, json.dumps(v, sort_keys=True)) for a, v in key.items())
    return (account, region, table, tuple(values))


class Strict:
    """The WSGI application: moto behind the serialisation lock, the rules above in front."""

    def __init__(self, app, hold_ms):
        self.app = app
        # The backends, and the held keys (checked and marked together with moto's work).
        self.lock = threading.Lock()
        # Keys of the transactions in flight, and the lock that guards them.
        self.keys = threading.Lock()
        self.held = {}
        # Fault rules, counters and the hold time (the control endpoints do not wait for moto).
        self.state = threading.Lock()
        self.hold_ms = hold_ms
        # Keys whose transactions are held longer: {"key_contains", "hold_ms"}.
        self.slow = []
        self.faults = []
        self.stats = dict.fromkeys(COUNTERS, 0)

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/_strict" or path.startswith("/_strict/"):
            return self.control(environ, start_response, path)
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if not target.startswith(TARGET_PREFIX) or environ.get("REQUEST_METHOD") != "POST":
            with self.lock:
                return self.call(environ, start_response)
        operation = target[len(TARGET_PREFIX):]
        try:
            request = json.loads(read_body(environ) or b"{}")
            if not isinstance(request, dict):
                raise ValueError
        except ValueError:  # moto says what is wrong with it
            with self.lock:
                return self.call(environ, start_response)
        return self.dynamodb(environ, start_response, operation, request)

    def call(self, environ, start_response):
        """moto's answer, fully read (the caller holds the lock)."""
        body = self.app(environ, start_response)
        try:
            return [b"".join(body)]
        finally:
            if hasattr(body, "close"):
                body.close()

    # DynamoDB

    def dynamodb(self, environ, start_response, operation, request):
        account, region = self.account_region(environ)
        items = touched(operation, request)
        if any(full for _, _, full in items):
            with self.lock:
                items = self.keys_only(account, region, items)
        if operation == "TransactWriteItems":
            with self.state:
                self.stats["transactions"] += 1
                hold = self.hold_ms / 1000
                for slow in self.slow:
                    if any(slow["key_contains"] in scalar_values(key) for _, key, _ in items):
                        hold = max(hold, slow["hold_ms"] / 1000)
        fault = self.take_fault(operation, items)
        if fault is not None:
            return self.fail(start_response, operation, items, *fault)
        if operation not in PLAIN_WRITES and operation != "TransactWriteItems":
            with self.lock:
                return self.call(environ, start_response)

        identities = [identity(account, region, table, key) for table, key, _ in items]
        # The held keys have a lock of their own: checking, holding and letting go of them never
        # waits behind moto's work, so a busy emulator does not stretch a hold.
        with self.keys:
            held = {i for i, held_key in enumerate(identities) if held_key in self.held}
            if held and operation in PLAIN_WRITES:
                self.count("write_conflicts")
                return dynamodb_error(
                    start_response, 400, "TransactionConflictException", CONFLICT_MESSAGE
                )
            if held:
                self.count("transaction_conflicts")
                return transaction_cancelled(start_response, held, len(items))
            token = object()
            if operation == "TransactWriteItems" and hold > 0:
                for held_key in identities:
                    if held_key is not None:
                        self.held[held_key] = token
            else:
                token = None
        if token is None:
            with self.lock:
                return self.call(environ, start_response)

        # In flight for the hold time: other requests run meanwhile, and meet the held keys.
        # Then it commits under moto's lock (atomically, conditions checked then).
        try:
            time.sleep(hold)
        finally:
            with self.keys:
                self.release(token)
        with self.lock:
            return self.call(environ, start_response)

    def release(self, token):
        for held_key in [k for k, holder in self.held.items() if holder is token]:
            del self.held[held_key]

    def keys_only(self, account, region, items):
        """Whole items (Put) reduced to their key attributes (the caller holds the lock)."""
        schemas = {}
        result = []
        for table, attributes, full in items:
            if full:
                if table not in schemas:
                    schemas[table] = key_names(account, region, table)
                attributes = {a: attributes[a] for a in schemas[table] if a in attributes}
            result.append((table, attributes, False))
        return result

    @staticmethod
    def account_region(environ):
        """The account and region moto files the request under."""
        auth = environ.get("HTTP_AUTHORIZATION", "")
        try:
            region = auth.split(",")[0].split("/")[2]
        except IndexError:
            region = "us-east-1"
        if "MOTO_ACCOUNT_ID" in os.environ:
            return os.environ["MOTO_ACCOUNT_ID"], region
        if environ.get("HTTP_X_MOTO_ACCOUNT_ID"):
            return environ["HTTP_X_MOTO_ACCOUNT_ID"], region
        try:
            from moto.iam.models import get_account_id_from

            match = ACCESS_KEY.search(auth)
            return get_account_id_from(match.group(1) if match else "AKIAEXAMPLE"), region
        except Exception:
            return "123456789012", region

    # Faults

    def take_fault(self, operation, items):
        texts = None
        with self.state:
            for rule in self.faults:
                if rule["operation"] not in ("*", operation):
                    continue
                needle = rule["key_contains"]
                if needle:
                    if texts is None:
                        texts = [scalar(v) for _, kv, _ in items for v in kv.values()]
                    if not any(needle in text for text in texts):
                        continue
                rule["times"] -= 1
                if rule["times"] <= 0:
                    self.faults.remove(rule)
                self.stats["faults_injected"] += 1
                return rule["error"], needle
        return None

    def fail(self, start_response, operation, items, error, needle):
        status, message = FAULTS[error]
        if error != "TransactionConflict":
            return dynamodb_error(start_response, status, error, message)
        if operation in ("TransactWriteItems", "TransactGetItems"):
            hit = {
                i
                for i, (_, attributes, _) in enumerate(items)
                if not needle or any(needle in scalar(v) for v in attributes.values())
            }
            return transaction_cancelled(start_response, hit, len(items))
        return dynamodb_error(start_response, 400, "TransactionConflictException", message)

    def count(self, counter):
        with self.state:
            self.stats[counter] += 1

    # Control endpoints

    def control(self, environ, start_response, path):
        method = environ.get("REQUEST_METHOD")
        try:
            document = json.loads(read_body(environ) or b"{}") if method == "POST" else {}
            if not isinstance(document, dict):
                raise ValueError("a JSON object is expected")
            with self.state:
                if path == "/_strict/faults" and method == "POST":
                    rule = self.rule(document)
                    self.faults.append(rule)
                    return json_response(start_response, 200, {"faults": self.faults})
                if path == "/_strict/faults" and method == "GET":
                    return json_response(start_response, 200, {"faults": self.faults})
                if path == "/_strict/faults" and method == "DELETE":
                    needle = query_value(environ, "key_contains")
                    if needle is None:
                        self.faults.clear()
                    else:
                        self.faults = [f for f in self.faults if f["key_contains"] != needle]
                    return json_response(start_response, 200, {"faults": self.faults})
                if path == "/_strict/slow" and method == "POST":
                    needle = document.get("key_contains")
                    hold = document.get("hold_ms")
                    if not isinstance(needle, str) or not needle:
                        raise ValueError("key_contains must be a non-empty string")
                    if isinstance(hold, bool) or not isinstance(hold, (int, float)) or hold < 0:
                        raise ValueError("hold_ms must be a number >= 0")
                    self.slow.append({"key_contains": needle, "hold_ms": hold})
                    return json_response(start_response, 200, {"slow": self.slow})
                if path == "/_strict/slow" and method == "DELETE":
                    needle = query_value(environ, "key_contains")
                    self.slow = [x for x in self.slow if needle is not None and x["key_contains"] != needle]
                    return json_response(start_response, 200, {"slow": self.slow})
                if path == "/_strict/config" and method == "POST":
                    hold = document.get("hold_ms")
                    if isinstance(hold, bool) or not isinstance(hold, (int, float)) or hold < 0:
                        raise ValueError("hold_ms must be a number >= 0")
                    self.hold_ms = hold
                    return json_response(start_response, 200, {"hold_ms": self.hold_ms})
                if path == "/_strict/config" and method == "GET":
                    return json_response(start_response, 200, {"hold_ms": self.hold_ms})
                if path == "/_strict/stats" and method == "GET":
                    return json_response(start_response, 200, dict(self.stats))
                if path == "/_strict/stats/reset" and method == "POST":
                    self.stats = dict.fromkeys(COUNTERS, 0)
                    return json_response(start_response, 200, dict(self.stats))
        except ValueError as e:
            return json_response(start_response, 400, {"error": str(e)})
        return json_response(start_response, 404, {"error": f"no {method} {path}"})

    @staticmethod
    def rule(document):
        operation = document.get("operation", "*")
        key_contains = document.get("key_contains") or ""
        error = document.get("error")
        times = document.get("times", 1)
        if not isinstance(operation, str) or not operation:
            raise ValueError("operation must be a DynamoDB operation name or \"*\"")
        if not isinstance(key_contains, str):
            raise ValueError("key_contains must be a string")
        if error not in FAULTS:
            raise ValueError(f"error must be one of {', '.join(FAULTS)}")
        if isinstance(times, bool) or not isinstance(times, int) or times < 1:
            raise ValueError("times must be an integer >= 1")
        return {
            "operation": operation,
            "key_contains": key_contains,
            "error": error,
            "times": times,
        }


if __name__ == "__main__":
    port = int(sys.argv[1])
    hold_ms = float(os.environ.get("STRICT_HOLD_MS", "15"))
    hold_ms = int(hold_ms) if hold_ms.is_integer() else hold_ms
    print(f"strict emulator: transactions held {hold_ms:g} ms", file=sys.stderr, flush=True)
    run_simple(
        "127.0.0.1",
        port,
        Strict(DomainDispatcherApplication(create_backend_app), hold_ms),
        threaded=True,
        request_handler=MotoRequestHandler,
    )
