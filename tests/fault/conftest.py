"""The fault suite runs on its OWN Kafka broker and redis-server (other ports, other run dir), so it can
stop and restart them without disturbing anything else on the machine."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import ROOT

FAULT_ENV = {
    "STREAMREC_RUN_DIR": os.environ.get("STREAMREC_FAULT_RUN_DIR", "/tmp/streamrec-fault"),
    "KAFKA_PORT": os.environ.get("STREAMREC_FAULT_KAFKA_PORT", "19092"),
    "KAFKA_CONTROLLER_PORT": os.environ.get("STREAMREC_FAULT_KAFKA_CONTROLLER_PORT", "19093"),
    "REDIS_PORT": os.environ.get("STREAMREC_FAULT_REDIS_PORT", "16379"),
}


class Stack:
    def __init__(self) -> None:
        self.env = {**os.environ, **FAULT_ENV}
        self.bootstrap = f"127.0.0.1:{FAULT_ENV['KAFKA_PORT']}"
        self.redis_url = f"redis://127.0.0.1:{FAULT_ENV['REDIS_PORT']}/0"

    def infra(self, action: str, what: str = "all", *extra: str) -> None:
        subprocess.run([str(ROOT / f"infra/local/{action}"), what, *extra], env=self.env, check=True,
                       stdout=subprocess.DEVNULL)

    @property
    def services(self) -> dict:
        return {"bootstrap": self.bootstrap, "redis_url": self.redis_url}


@pytest.fixture(scope="session")
def stack():
    s = Stack()
    s.infra("down", "all", "--wipe")
    s.infra("up")
    yield s
    s.infra("down", "all", "--wipe")
