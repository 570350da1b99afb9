#!/usr/bin/env python3
"""Verifies LAP receipt envelopes with an independent DSSE implementation (securesystemslib).

Usage: verify_dsse.py PUBLIC_KEY_HEX KEYID ENVELOPE_FILE...
Exit 0 when every envelope verifies and has the LAP receipt payloadType; 1 otherwise.
"""
import json
import sys

from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey

PAYLOAD_TYPE = "application/vnd.lap.receipt.v1+json"


def main():
    pub, keyid, files = sys.argv[1], sys.argv[2], sys.argv[3:]
    key = SSlibKey(keyid, "ed25519", "ed25519", {"public": pub})
    failures = 0
    for path in files:
        with open(path, "rb") as f:
            env = Envelope.from_dict(json.loads(f.read()))
        try:
            if env.payload_type != PAYLOAD_TYPE:
                raise ValueError(f"payloadType {env.payload_type!r}")
            env.verify([key], 1)
            receipt = json.loads(env.payload)
            print(f"ok {path} {receipt['kind']} index={receipt['log']['index']}")
        except Exception as e:  # any failure is a verification failure
            failures += 1
            print(f"FAIL {path}: {e}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
