"""Run under torchrun by tests/test_distributed.py: ``reproduce`` whose audit stage (run by
rank 0 alone) refuses its input, as a real refusal inside a rank-0 stage would."""

import sys

from privatenet import cli
from privatenet.app import protocol
from privatenet.errors import PrivatenetError


def refusing_audit(**kwargs):
    raise PrivatenetError("the audit stage refused its input (a test refusal)")


if __name__ == "__main__":
    protocol.audit_job = refusing_audit
    sys.exit(cli.main(sys.argv[1:]))
