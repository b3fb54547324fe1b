"""cpu_count(): usable CPUs, not the host's."""

from __future__ import annotations

import os
from pathlib import Path

from parloop import cpu_count
from parloop._cpu import cpu_report


def test_cpu_count_is_at_most_the_affinity_mask() -> None:
    assert 1 <= cpu_count() <= len(os.sched_getaffinity(0))


def test_a_cgroup_v1_quota_limits_the_count(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("150000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    report = cpu_report(tmp_path)
    assert report.cgroup_quota == 1.5
    assert report.usable == min(2, len(os.sched_getaffinity(0)))
    assert "cgroup quota 1.5" in report.reason


def test_no_quota_means_the_affinity_mask_decides(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    report = cpu_report(tmp_path)
    assert report.cgroup_quota is None
    assert report.usable == min(os.cpu_count() or 1, len(os.sched_getaffinity(0)))
