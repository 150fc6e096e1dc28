# ruff: noqa: E501 (the alert annotations are compared whole)
"""The PITR alert rules fire on what the stream's metrics say (`promtool test rules`, real promtool)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

RULES = Path(__file__).resolve().parents[2] / "contrib" / "prometheus-alerts.yml"

TESTS = """
rule_files: [RULES]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'backupd_pitr_lag_seconds{backup_job="shop", instance="h"}'
        values: '0 0 0 1000x20'
      - series: 'backupd_pitr_lag_seconds{backup_job="blog", instance="h"}'
        values: '0 300x20'
      - series: 'backupd_pitr_gaps_total{backup_job="shop", instance="h"}'
        values: '0 0 0 1 1 1'
      - series: 'backupd_pitr_gaps_total{backup_job="blog", instance="h"}'
        values: '0 0 0 0 0 0'
      - series: 'backupd_pitr_s3_pending{backup_job="shop", instance="h"}'
        values: '0 1 0 1 0 4x40'
      - series: 'backupd_pitr_s3_pending{backup_job="blog", instance="h"}'
        values: '0 1 0 1 0 1 0 1 0 1 0 1 0 1 0 1 0 1 0 1 0 1 0 1 0 1 0 1 0 1 0 1 0 1 0 1 0 1 0 1 0 1 0'
    alert_rule_test:
      - eval_time: 40m
        alertname: BackupdPitrSegmentsNotInS3
        exp_alerts:
          - exp_labels: {severity: warning, backup_job: shop, instance: h}
            exp_annotations:
              summary: "shop: 4 binlog segment(s) not copied to S3"
              description: "The stream commits segments but cannot copy them to the bucket; they are kept locally and retried. Check the stream's log (s3_failed events) and `backupd status`; `backupd run shop` also ships them."
      - eval_time: 15m
        alertname: BackupdPitrStreamLagging
        exp_alerts:
          - exp_labels: {severity: warning, backup_job: shop, instance: h}
            exp_annotations:
              summary: "shop: the binlog stream is 16m 40s behind"
              description: "Transactions older than that are not committed yet: a restore --until cannot reach them. `backupd status` shows the stream; its log (daemon or backupd-stream@shop) says why (server unreachable, a refused check)."
      - eval_time: 5m
        alertname: BackupdPitrGap
        exp_alerts:
          - exp_labels: {severity: critical, backup_job: shop, instance: h}
            exp_annotations:
              summary: "shop: binlog was lost before it was streamed (a PITR gap)"
              description: "The server purged binlog the stream had not read (stream stopped longer than the server's binlog expiry, or PURGE/RESET). Restores to an instant before the next base backup are no longer possible: run `backupd run shop` now for a new base; see docs/pitr.md (gaps)."
"""


def test_pitr_alerts_fire_on_lag_and_gaps(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    spec = tmp_path / "pitr-tests.yml"
    spec.write_text(TESTS.replace("RULES", str(RULES)))
    done = subprocess.run([promtool, "test", "rules", str(spec)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    # the test must be able to fail: a lag under the threshold fires nothing
    spec.write_text(TESTS.replace("RULES", str(RULES)).replace("1000x20", "100x20"))
    done = subprocess.run([promtool, "test", "rules", str(spec)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
