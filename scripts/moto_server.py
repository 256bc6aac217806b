"""The AWS emulator for the tests: moto's server, with one request handled at a time.

moto's backends are not thread-safe (a TransactWriteItems copies a table while another thread
writes to it, and conditional writes can interleave), while DynamoDB's conditional writes are
atomic. Connections are still served by threads; only the work on the backends is serialised, so
the emulator keeps DynamoDB's guarantees under concurrent clients.

    moto_server.py PORT
"""

import sys
import threading

from werkzeug.serving import run_simple

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)


def serialised(app):
    lock = threading.Lock()

    def handle(environ, start_response):
        with lock:
            body = app(environ, start_response)
            try:
                return [b"".join(body)]
            finally:
                if hasattr(body, "close"):
                    body.close()

    return handle


if __name__ == "__main__":
    port = int(sys.argv[1])
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(
        "127.0.0.1",
        port,
        serialised(app),
        threaded=True,
        request_handler=MotoRequestHandler,
    )
