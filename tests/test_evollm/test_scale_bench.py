"""benchmarks/scale.py keeps working: its tiny shape runs on the CPU and prints every row."""

import importlib.util

import pytest

from helpers import ROOT


@pytest.mark.slow
def test_scale_benchmark_runs_at_the_tiny_shape(capsys):
    spec = importlib.util.spec_from_file_location("scale", ROOT / "benchmarks" / "scale.py")
    scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scale)
    assert scale.main(["--shape", "tiny", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for row in ("copy bandwidth", "memory plan, whole device", "candidate merge, DARE-TIES, 3 sources",
                "decode, batch 16", "fitness pass, 24 prompts", "PS run, 1000 candidates"):
        assert f"| {row}" in out


@pytest.mark.slow
def test_a_failing_part_becomes_a_row_and_the_table_goes_on(capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("scale", ROOT / "benchmarks" / "scale.py")
    scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scale)

    def broken(*a, **k):
        raise RuntimeError("out of memory (simulated)")
    monkeypatch.setattr(scale, "new_path", broken)
    assert scale.main(["--shape", "tiny", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "| decode, batch 1 | FAILED | RuntimeError: out of memory (simulated)" in out
    assert "| fitness pass | FAILED |" in out and "| PS run, 1000 candidates" in out
    assert "| candidate merge, DARE-TIES, 3 sources on the device | " in out
