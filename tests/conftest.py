"""Tests run offline (no hub); `helpers` (tests/helpers.py) is importable from every test folder
(pyproject: pythonpath). Tests marked `slow` (a few seconds or more each) are skipped by `make test-fast`."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
