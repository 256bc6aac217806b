"""SAM CLI, with the Lambda containers of `sam local` on the host's network.

    .venv-sam/bin/python scripts/sam_host_network.py local invoke ...   (any `sam` arguments)

`sam local` publishes the runtime interface emulator's port 8080 on 127.0.0.1:<a free port> and
calls it there, which needs Docker's bridge network. scripts/sam-local.sh runs Docker without one
(`dockerd --bridge=none --iptables=false`: nothing leaves loopback, the host's firewall is left
alone), and `--docker-network host` only skips connecting the container to a network. So this
creates SAM's Lambda containers with host networking instead, the emulator listening on the very
loopback port SAM calls and the runtime API on another free loopback port: the function reaches
the AWS emulator and the provider simulator on 127.0.0.1 too.

It relies on SAM's internals (the labels of its Lambda containers, the shape of its port mapping,
the emulator's entry point), hence the pinned aws-sam-cli in scripts/requirements-sam.txt; it
refuses to run, rather than guess, when they change.
"""

import socket
import sys

import docker.models.containers
from samcli.cli.main import cli

# The emulator's port in SAM's container (samcli.local.docker.container.Container).
RAPID_PORT_CONTAINER = "8080"
_create = docker.models.containers.ContainerCollection.create


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def create(self, image, command=None, **kwargs):
    if (kwargs.get("labels") or {}).get("sam.cli.container.type") != "lambda":
        return _create(self, image, command, **kwargs)
    ports = {str(k): v for k, v in (kwargs.pop("ports", None) or {}).items()}
    entrypoint = kwargs.get("entrypoint")
    binding = ports.get(RAPID_PORT_CONTAINER)
    if (
        set(ports) != {RAPID_PORT_CONTAINER}
        or not isinstance(binding, tuple)
        or len(binding) != 2
        or not isinstance(entrypoint, list)
        or not str(entrypoint[0]).endswith("/aws-lambda-rie")
    ):
        sys.exit(
            f"sam_host_network.py: SAM's Lambda container is not what this wrapper knows "
            f"(ports {ports!r}, entry point {entrypoint!r}): check the aws-sam-cli pin"
        )
    port = binding[1]
    kwargs["network_mode"] = "host"
    kwargs["entrypoint"] = entrypoint + [
        "--runtime-interface-emulator-address",
        f"127.0.0.1:{port}",
        "--runtime-api-address",
        f"127.0.0.1:{free_port()}",
    ]
    return _create(self, image, command, **kwargs)


docker.models.containers.ContainerCollection.create = create

if __name__ == "__main__":
    sys.exit(cli(prog_name="sam"))
